"""Unit conversions: known values and round trips of every conversion in ``workers.units``."""

from __future__ import annotations

import numpy as np
import pytest

from workers import units

ONE_ANGSTROM_EV = 12398.419843320026  # h c / (1 angstrom), CODATA 2018 exact constants


def test_energy_and_wavelength_known_values() -> None:
    assert units.wavelength_from_energy_ev(12398.419843320026) == pytest.approx(1e-10, rel=1e-12)
    assert units.energy_ev_from_wavelength(1e-10) == pytest.approx(ONE_ANGSTROM_EV, rel=1e-12)
    assert units.energy_ev_from_angstrom(1.0) == pytest.approx(12398.42, abs=0.01)
    assert units.angstrom_from_energy_ev(12398.42) == pytest.approx(1.0, rel=1e-6)
    joules = 8000 * units.ELECTRONVOLT
    assert units.wavelength_from_energy_j(joules) == pytest.approx(1.5498e-10, rel=1e-4)  # 8 keV: 1.5498 angstrom
    assert units.energy_j_from_wavelength(1e-10) == pytest.approx(ONE_ANGSTROM_EV * units.ELECTRONVOLT, rel=1e-12)
    assert units.PLANCK_C / units.ELECTRONVOLT * 1e10 == pytest.approx(units.HC_EV_ANGSTROM, rel=1e-15)


@pytest.mark.parametrize("energy_ev", [250.0, 8000.0, 12398.42, 30000.0])
def test_energy_and_wavelength_round_trip(energy_ev: float) -> None:
    assert units.energy_ev_from_wavelength(units.wavelength_from_energy_ev(energy_ev)) == pytest.approx(energy_ev)
    assert units.energy_ev_from_angstrom(units.angstrom_from_energy_ev(energy_ev)) == pytest.approx(energy_ev)
    joules = energy_ev * units.ELECTRONVOLT
    assert units.energy_j_from_wavelength(units.wavelength_from_energy_j(joules)) == pytest.approx(joules)
    metres = units.wavelength_from_energy_ev(energy_ev)
    assert units.angstrom_from_energy_ev(energy_ev) == pytest.approx(metres * 1e10, rel=1e-12)
    assert units.wavelength_from_energy_j(joules) == pytest.approx(metres, rel=1e-12)


def test_far_field_sample_pixel_known_value_and_inverse() -> None:
    """1 angstrom, 2 m, 128 pixels of 75 um: lambda z / (M p) = 20.83 nm; the detector pixel comes back."""
    pixel = units.sample_pixel("far", 75e-6, 1e-10, 2.0, 128)
    assert pixel == pytest.approx(1e-10 * 2.0 / (128 * 75e-6)) and pixel == pytest.approx(20.833e-9, rel=1e-4)
    assert units.detector_pixel("far", pixel, 1e-10, 2.0, 128) == pytest.approx(75e-6, rel=1e-12)


def test_near_field_fresnel_scaling() -> None:
    """A focus 1 mm before the sample, detector 999 mm behind it: magnification 1000, pixel and distance / 1000."""
    assert units.fresnel_magnification(0.999, 1e-3) == pytest.approx(1000.0)
    assert units.fresnel_magnification(0.999, None) == units.fresnel_magnification(0.999, 0.0) == 1.0
    assert units.effective_distance(0.999, 1e-3) == pytest.approx(0.999e-3)
    assert units.effective_distance(0.5, None) == 0.5
    pixel = units.sample_pixel("near", 6.5e-6, 1e-10, 0.999, 64, 1e-3)
    assert pixel == pytest.approx(6.5e-9)
    assert units.detector_pixel("near", pixel, 1e-10, 0.999, 64, 1e-3) == pytest.approx(6.5e-6, rel=1e-12)
    assert units.sample_pixel("near", 6.5e-6, 1e-10, 0.5, 64) == 6.5e-6  # a parallel beam: the detector pixel


def test_translations_and_corners_round_trip_and_known_values() -> None:
    """CXI's default basis: the probe moves by minus the sample translation; the frame's row axis is lab -y,
    its column axis lab -x, so (row, col) = (y, x) / pixel - M / 2."""
    corners = units.corners_from_translations(np.array([[0.0, 0.0, 0.0], [2e-8, 1e-8, 0.0]]), (1e-8, 2e-8), 64)
    np.testing.assert_allclose(corners, [[-32.0, -32.0], [-31.0, -31.0]])
    rng = np.random.default_rng(0)
    corners = rng.uniform(-50, 300, (20, 2))
    translation = units.translations_from_corners(corners, 1e-8, 64)
    assert translation.shape == (20, 3) and not translation[:, 2].any()
    np.testing.assert_allclose(units.corners_from_translations(translation, (1e-8, 1e-8), 64), corners, atol=1e-9)


def test_corners_along_another_basis() -> None:
    """Detector axes along lab +x (rows) and +y (cols): a translation along +x moves the probe to lower rows."""
    basis = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    corners = units.corners_from_translations(np.array([[3e-8, 0.0, 0.0]]), (1e-8, 1e-8), 10, basis)
    np.testing.assert_allclose(corners, [[-8.0, -5.0]])
