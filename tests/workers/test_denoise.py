"""PINE's complex denoiser: eq. 22 with min-max rescaling, the region's box, tiles without seams."""

from __future__ import annotations

import pytest
import torch

from models.dncnn import DnCNN
from workers.denoise import ComplexDenoiser, bounding_box, reach


@pytest.fixture(scope="module")
def net() -> DnCNN:
    """An untrained but nonexpansive DnCNN (RealSN from a fresh start): a real network, not an identity."""
    torch.manual_seed(0)
    model = DnCNN()
    model.normalise_(iterations=20)
    return model.eval().requires_grad_(False)


def _object(shape: tuple[int, int], seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    amp = 0.7 + 0.2 * torch.rand(shape, generator=g)
    phase = torch.rand(shape, generator=g) - 0.5
    return torch.polar(amp, phase)


def test_reach_is_the_receptive_field_radius(net: DnCNN) -> None:
    assert reach(net) == 17  # seventeen 3x3 convolutions


def test_denoiser_is_eq_22_with_min_max_rescaling(net: DnCNN) -> None:
    """D(O) = Dhat(Re O) + i Dhat(Im O), each channel rescaled to [0, 1] and back (one tile: the whole object)."""
    obj = _object((40, 50))
    expected = []
    for channel in (obj.real, obj.imag):
        lo, hi = channel.min(), channel.max()
        with torch.no_grad():
            out = net(((channel - lo) / (hi - lo))[None, None])[0, 0]
        expected.append(lo + (hi - lo) * out)
    got = ComplexDenoiser(net, tile=256)(obj)
    torch.testing.assert_close(got, torch.complex(*expected), rtol=1e-5, atol=1e-6)
    assert float((got - obj).abs().max()) > 1e-3, "the network changed nothing"


def test_tiled_equals_untiled_across_many_seams(net: DnCNN) -> None:
    """Cores of 32 px with a halo of the network's reach: 5 x 4 tiles give the one-tile result, so no seam shows."""
    obj = _object((150, 110), seed=1)
    whole = ComplexDenoiser(net, tile=256)(obj)
    tiled = ComplexDenoiser(net, tile=32)(obj)
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-6)


def test_affine_equivariant_per_channel(net: DnCNN) -> None:
    """Min-max rescaling makes D(s O + c) = s D(O) + c (s > 0 real, c complex): a measured object's scale
    and offset do not change what the network sees."""
    obj = _object((48, 48), seed=2)
    d = ComplexDenoiser(net)
    s, c = 37.0, complex(-5.0, 2.0)
    torch.testing.assert_close(d(s * obj + c), s * d(obj) + c, rtol=1e-4, atol=1e-4 * s)


def test_region_sets_the_range_and_the_box(net: DnCNN) -> None:
    """Outside the region's bounding box D is the identity; values far outside the region's range next
    to it are clamped, so they do not squeeze the region into a sliver of [0, 1]."""
    obj = _object((80, 80), seed=3)
    region = torch.zeros(80, 80, dtype=torch.bool)
    region[20:60, 25:55] = True
    assert bounding_box(region) == (slice(20, 60), slice(25, 55))
    d = ComplexDenoiser(net)
    out = d(obj, region)
    for rows, cols in ((slice(0, 20), slice(None)), (slice(60, None), slice(None)), (slice(None), slice(0, 25))):
        assert torch.equal(out[rows, cols], obj[rows, cols])
    assert float((out - obj)[region].abs().max()) > 1e-3
    far = obj.clone()
    far[:, :10] = 1e3  # beyond the halo of 17 px: cannot matter
    torch.testing.assert_close(d(far, region)[region], out[region])


def test_flat_channel_is_left_alone(net: DnCNN) -> None:
    """A real object (imaginary part 0 everywhere) has no range to rescale: that channel stays 0."""
    obj = _object((40, 40), seed=4).abs().to(torch.complex64)
    out = ComplexDenoiser(net)(obj)
    assert torch.equal(out.imag, torch.zeros_like(out.imag))
    assert float((out.real - obj.real).abs().max()) > 1e-3
