"""Simulated probes: unit power, centred, and the beam widths their docstring promises."""

from __future__ import annotations

import numpy as np
import pytest

from workers.probe_start import beam_diameter
from workers.simulate import far_field_geometry, make_probe


def _width(probe: np.ndarray, axis: int) -> float:
    """Width (pixels) holding the central 90% of the beam's power along ``axis``."""
    profile = (np.abs(probe) ** 2).sum(1 - axis)
    cumulative = np.cumsum(profile) / profile.sum()
    return float(np.searchsorted(cumulative, 0.95) - np.searchsorted(cumulative, 0.05))


@pytest.mark.parametrize("kind", ["focused", "structured", "near", "airy", "zone-plate-25", "zone-plate-50", "kb"])
def test_probes_have_unit_power_and_are_centred(kind: str) -> None:
    probe = make_probe(64, kind, np.random.default_rng(0), far_field_geometry(64))
    assert probe.shape == (64, 64) and probe.dtype == np.complex64
    assert (np.abs(probe) ** 2).sum() == pytest.approx(1.0, rel=1e-5)
    power = np.abs(probe) ** 2
    centre = [(power.sum(1 - a) * np.arange(64)).sum() for a in (0, 1)]
    assert centre == pytest.approx([32, 32], abs=2.5)


def test_beam_widths_follow_the_defocus() -> None:
    rng, g = np.random.default_rng(0), far_field_geometry(64)
    airy, zp25, zp50, kb = (make_probe(64, k, rng, g) for k in ("airy", "zone-plate-25", "zone-plate-50", "kb"))
    assert beam_diameter(airy) < beam_diameter(zp25) < beam_diameter(zp50)
    assert _width(zp50, 0) > 1.3 * _width(zp25, 0)
    assert _width(kb, 1) > 1.2 * _width(kb, 0), "the KB beam is wider along columns"
