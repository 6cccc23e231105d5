"""The fast-forward U-Net: layout, the untrained identity, gradients, the seed's loss, blended tiles, the loader."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.unet import (
    IN_CHANNELS,
    OUT_CHANNELS,
    UNet,
    apply_tiled,
    fast_forward_loss,
    load_fast_forward,
    save_fast_forward,
    tile_starts,
)


def test_four_levels_keep_the_shape_and_refuse_other_sizes() -> None:
    net = UNet(levels=4, width=4)
    assert net.multiple == 16
    assert len(net.down) == len(net.up) == 4
    out = net(torch.randn(2, IN_CHANNELS, 32, 48))
    assert out.shape == (2, OUT_CHANNELS, 32, 48)
    with pytest.raises(ValueError, match="multiples of 16"):
        net(torch.randn(1, IN_CHANNELS, 40, 48))


def test_untrained_network_makes_no_jump_and_gradients_reach_the_first_layer() -> None:
    torch.manual_seed(0)
    net = UNet(levels=4, width=4)
    x = torch.randn(2, IN_CHANNELS, 32, 32)
    assert torch.count_nonzero(net(x)) == 0
    target = torch.randn(2, OUT_CHANNELS, 32, 32)
    weight = torch.ones(2, 1, 32, 32)
    optimiser = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(2):  # the zero head passes no gradient inward at first; after one step it does
        optimiser.zero_grad()
        fast_forward_loss(net(x), target, weight).backward()
        optimiser.step()
    first = net.down[0][0].weight.grad
    assert first is not None and float(first.abs().sum()) > 0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_loss_weights_pixels_and_penalises_gradients() -> None:
    shape = (1, 2, 16, 16)
    target = torch.zeros(shape)
    ones = torch.ones(1, 1, 16, 16)
    offset = torch.full(shape, 0.1)
    checker = 0.1 * (-1.0) ** (torch.arange(16)[:, None] + torch.arange(16)[None, :]).expand(shape)
    assert float(fast_forward_loss(target, target, ones)) == 0
    flat, rough = fast_forward_loss(offset, target, ones), fast_forward_loss(checker, target, ones)
    assert float(flat) == pytest.approx(0.01)  # same L2, no gradient
    assert float(rough) > 5 * float(flat)
    assert float(fast_forward_loss(checker, target, ones, gradient_weight=0)) == pytest.approx(0.01)
    half = ones.clone()
    half[..., 8:] = 0
    bad = offset.clone()
    bad[..., 8:] = 100.0  # outside the weighted pixels: ignored
    assert float(fast_forward_loss(bad, target, half)) == pytest.approx(float(flat))


@pytest.mark.parametrize(("h", "w"), [(77, 130), (20, 9), (64, 64), (65, 200)])
def test_tiles_of_a_pixelwise_network_give_its_untiled_output(h: int, w: int) -> None:
    torch.manual_seed(1)
    net = torch.nn.Conv2d(IN_CHANNELS, OUT_CHANNELS, 1)
    x = torch.randn(IN_CHANNELS, h, w)
    tiled = apply_tiled(net, x, multiple=16, tile=32, overlap=12, batch=3)
    with torch.no_grad():
        whole = net(x[None])[0]
    assert tiled.shape == (OUT_CHANNELS, h, w)
    torch.testing.assert_close(tiled, whole, rtol=1e-5, atol=1e-6)


def test_tile_starts_cover_with_the_overlap() -> None:
    assert tile_starts(64, 64, 16) == [0]
    starts = tile_starts(200, 64, 16)
    assert starts[0] == 0 and starts[-1] == 200 - 64
    assert all(b - a <= 64 - 16 for a, b in zip(starts, starts[1:], strict=False))


def test_tiled_unet_blends_without_seams() -> None:
    """A trained-like U-Net (random weights, live head) on a smooth image: where tiles overlap the blend stays
    within the range of the two tiles' outputs, so no step appears at a tile edge larger than inside a tile."""
    torch.manual_seed(2)
    net = UNet(levels=4, width=4).eval()
    torch.nn.init.normal_(net.head.weight, std=0.1)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 96), torch.linspace(0, 1, 96), indexing="ij")
    x = torch.stack([yy, xx, torch.ones_like(yy)])
    out = apply_tiled(net, x, net.multiple, tile=64, overlap=32)
    steps = (out[:, :, 1:] - out[:, :, :-1]).abs()
    inner = steps[:, :, 5:-5]  # away from the image border, where zero padding acts
    assert torch.isfinite(out).all()
    assert float(inner.max()) < 10 * float(inner.median()) + 1e-6


def test_save_and_load_round_trip_and_loader_errors(tmp_path: Path) -> None:
    torch.manual_seed(3)
    net = UNet(levels=4, width=4)
    torch.nn.init.normal_(net.head.weight)
    path = tmp_path / "ff.pt"
    save_fast_forward(net, path, {"warmup_engine": "epie"})
    loaded = load_fast_forward(path)
    x = torch.randn(1, IN_CHANNELS, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x))
    assert not any(p.requires_grad for p in loaded.parameters())
    with pytest.raises(FileNotFoundError, match="not found"):
        load_fast_forward(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a network")
    with pytest.raises(ValueError, match="unreadable"):
        load_fast_forward(tmp_path / "junk.pt")
