"""Every unit conversion of the project, both directions, in one place (numpy only).

Conventions (CXI's, as cdtools reads them): photon energy in joules in files and eV on the
wire; a position is the *sample* translation (x, y, z) in metres in the lab frame, so the
probe moves by its negative; the frame's row and column axes point along the detector's
``basis_vectors`` (3, 2), ``DEFAULT_BASIS`` where a file has none. Engines work in
sample-plane pixels: lambda z / (M p) in the far field (M pixels of size p at distance z),
p / magnification in the near field (Fresnel scaling of a cone beam from a focus f before
the sample: magnification (f + z) / f, effective propagation distance z / magnification).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

PLANCK_C = 6.62607015e-34 * 299792458.0  # h c, J m
ELECTRONVOLT = 1.602176634e-19  # J
HC_EV_ANGSTROM = 12398.419843320026  # h c in eV angstrom (PLANCK_C / ELECTRONVOLT * 1e10 to the last digit)
DEFAULT_BASIS = np.array([[0.0, -1.0], [-1.0, 0.0], [0.0, 0.0]])
DEFAULT_INVERSE = np.linalg.pinv(DEFAULT_BASIS)


def wavelength_from_energy_j(energy_j: float) -> float:
    """Photon energy (J) -> wavelength (m)."""
    return PLANCK_C / energy_j


def energy_j_from_wavelength(wavelength_m: float) -> float:
    """Wavelength (m) -> photon energy (J)."""
    return PLANCK_C / wavelength_m


def wavelength_from_energy_ev(energy_ev: float) -> float:
    """Photon energy (eV) -> wavelength (m)."""
    return PLANCK_C / (energy_ev * ELECTRONVOLT)


def energy_ev_from_wavelength(wavelength_m: float) -> float:
    """Wavelength (m) -> photon energy (eV)."""
    return PLANCK_C / wavelength_m / ELECTRONVOLT


def energy_ev_from_angstrom(wavelength_a: float) -> float:
    """Wavelength (angstrom, as DECTRIS's ``incident_wavelength``) -> photon energy (eV)."""
    return HC_EV_ANGSTROM / wavelength_a


def angstrom_from_energy_ev(energy_ev: float) -> float:
    """Photon energy (eV) -> wavelength (angstrom)."""
    return HC_EV_ANGSTROM / energy_ev


def fresnel_magnification(distance: float, focus_distance: float | None) -> float:
    """(f + z) / f for a focus ``focus_distance`` f before the sample and a detector ``distance`` z behind it;
    1 without a focus (None or 0: a parallel beam)."""
    return 1.0 if not focus_distance else (focus_distance + distance) / focus_distance


def effective_distance(distance: float, focus_distance: float | None) -> float:
    """The near-field propagation distance z / magnification of the equivalent parallel-beam setup (m)."""
    return distance / fresnel_magnification(distance, focus_distance)


def detector_distance(effective: float, focus_distance: float | None) -> float:
    """The detector distance z whose ``effective_distance`` is ``effective`` (m): z_eff f / (f - z_eff).

    Needs ``effective`` below ``focus_distance``; without a focus it is ``effective`` itself.
    """
    return effective if not focus_distance else effective * focus_distance / (focus_distance - effective)


def sample_pixel(
    propagation: Literal["far", "near"],
    pixel: float,
    wavelength: float,
    distance: float,
    size: int,
    focus_distance: float | None = None,
) -> float:
    """The sample-plane pixel (m) of detector pixel ``pixel`` (m) for frames of ``size`` pixels:
    lambda z / (M p) in the far field, p / magnification in the near field."""
    if propagation == "far":
        return wavelength * distance / (size * pixel)
    return pixel / fresnel_magnification(distance, focus_distance)


def detector_pixel(
    propagation: Literal["far", "near"],
    pixel: float,
    wavelength: float,
    distance: float,
    size: int,
    focus_distance: float | None = None,
) -> float:
    """The detector pixel (m) that gives sample-plane pixel ``pixel`` (m): the inverse of ``sample_pixel``."""
    if propagation == "far":
        return wavelength * distance / (size * pixel)
    return pixel * fresnel_magnification(distance, focus_distance)


def corners_from_translations(
    translation: np.ndarray, pixel: tuple[float, float], size: int, basis: np.ndarray = DEFAULT_BASIS
) -> np.ndarray:
    """Sample translations (N, 3) m -> probe-window corners (N, 2) (row, col) in sample-plane pixels.

    ``pixel`` is the sample-plane (dy, dx) in metres, ``basis`` the unit lab directions (3, 2) of the
    frame's row and column axes.
    """
    inverse = DEFAULT_INVERSE if basis is DEFAULT_BASIS else np.linalg.pinv(basis)
    centres = (-np.asarray(translation, dtype=np.float64) @ inverse.T) / np.asarray(pixel)
    return centres - size / 2


def translations_from_corners(corners: np.ndarray, pixel: float, size: int) -> np.ndarray:
    """Probe-window corners (N, 2) pixels -> sample translations (N, 3) m along ``DEFAULT_BASIS``."""
    return -((np.asarray(corners, dtype=np.float64) + size / 2) * pixel) @ DEFAULT_BASIS.T
