"""The DnCNN: its layout, RealSN (each convolution's operator norm becomes 1), the weight loader's errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models.dncnn import SN_SIZE, DnCNN, load_denoiser


def _operator_norm(weight: torch.Tensor, size: int, iterations: int = 400) -> float:
    """A convolution's largest singular value on size x size images with zero padding, one layer at a time."""
    u = torch.randn(1, weight.shape[1], size, size, generator=torch.Generator().manual_seed(1))
    for _ in range(iterations):
        u = F.conv_transpose2d(F.conv2d(u, weight, padding=1), weight, padding=1)
        u = u / u.norm()
    return float(F.conv2d(u, weight, padding=1).norm())


def test_layout_is_seventeen_convolutions_without_batch_norm() -> None:
    net = DnCNN()
    shapes = [tuple(conv.weight.shape) for conv in net.layers]
    assert shapes == [(64, 1, 3, 3)] + [(64, 64, 3, 3)] * 15 + [(1, 64, 3, 3)]
    assert all(conv.bias is not None for conv in net.layers)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    n_params = sum(p.numel() for p in net.parameters())
    assert n_params == 64 * 9 + 64 + 15 * (64 * 64 * 9 + 64) + 64 * 9 + 1
    x = torch.rand(2, 1, 20, 28)
    with torch.no_grad():
        assert torch.equal(net(x), x - net.residual(x))


def test_normalise_gives_every_convolution_operator_norm_one() -> None:
    torch.manual_seed(0)
    net = DnCNN(depth=4, channels=8)
    net.normalise_(iterations=500)
    for conv in net.layers:
        assert _operator_norm(conv.weight.detach(), SN_SIZE) == pytest.approx(1.0, abs=2e-3)


def test_state_dict_holds_only_weights_and_biases() -> None:
    assert all(key.endswith((".weight", ".bias")) for key in DnCNN().state_dict())


def test_load_denoiser_round_trip_and_errors(tmp_path: Path) -> None:
    net = DnCNN(depth=5, channels=8)
    torch.save(net.state_dict(), tmp_path / "net.pt")
    loaded = load_denoiser(tmp_path / "net.pt")
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    x = torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), net(x))
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_denoiser(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pt"):
        load_denoiser(tmp_path / "bad.pt")
