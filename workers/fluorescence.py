"""X-ray fluorescence counts aligned with a scan's frames, their HDF5 layouts, and xraylib's constants.

Model (seed 004, eq. 2.1; self-absorption neglected): the expected counts of element e at scan
position j are ``s_e sum_r |P(r - x_j)|^2 w_e(r)``, with ``w_e`` the element's areal mass density
(g/cm^2) per object pixel, ``|P|^2`` the probe intensity in photons and ``s_e`` the detector's
sensitivity (counts per incident photon per g/cm^2).

HDF5 layouts read (positions matched by index, the frames' order):

* ``xrf/`` beside the CXI ``entry_1`` (what ``write_cxi`` writes): ``counts`` (ELEMENT, FRAME),
  ``channel_names`` (ELEMENT,) strings, optional ``sensitivity`` (ELEMENT,); attribute ``units``.
* MAPS / XRF-Maps fitted maps: ``MAPS/XRF_Analyzed/Fitted/Counts_Per_Sec`` with
  ``.../Channel_Names``, or ``MAPS/XRF_fits`` with ``MAPS/channel_names``; counts
  (CHANNEL, ROW, COL) taken in row-major order as frames 0..N-1. Channels named ``X`` or ``X_K``
  with X an element symbol are kept; scatter and other channels are dropped.

Without a ``sensitivity`` the default is xraylib's K-alpha fluorescence cross section (cascade,
Kissel) at the beam energy times ``SOLID_ANGLE_FRACTION`` (the simulation uses the same).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import xraylib

from workers.errors import DataError

GROUP = "xrf"
MAPS_LAYOUTS = (
    ("MAPS/XRF_Analyzed/Fitted/Counts_Per_Sec", "MAPS/XRF_Analyzed/Fitted/Channel_Names"),
    ("MAPS/XRF_fits", "MAPS/channel_names"),
)
SOLID_ANGLE_FRACTION = 0.1
MAP_UNITS = "g/cm^2"
HC_KEV_ANGSTROM = 12.398419843320026


@dataclass(frozen=True)
class Fluorescence:
    """Fluorescence counts of a scan's frames.

    counts      : (ELEMENT, FRAME) float32, one column per frame, in the frames' order.
    elements    : element symbols, one per row of ``counts``.
    sensitivity : (ELEMENT,) counts per incident photon per g/cm^2, or None (xraylib default).
    """

    counts: np.ndarray
    elements: tuple[str, ...]
    sensitivity: np.ndarray | None = None
    units: str = "counts"

    def validate(self, source: str, n_frames: int) -> None:
        """Raise ``DataError`` naming ``source`` and the field for counts a reconstruction cannot use."""
        c = self.counts
        if c.ndim != 2 or c.shape != (len(self.elements), n_frames):
            raise DataError(
                f"{source}: {GROUP}/counts: expected shape ({len(self.elements)}, {n_frames}) "
                f"(elements, frames), got {c.shape}"
            )
        if not np.isfinite(c).all() or (c < 0).any():
            raise DataError(f"{source}: {GROUP}/counts: values must be finite and >= 0")
        for name in self.elements:
            atomic_number(name, source)
        if len(set(self.elements)) != len(self.elements):
            raise DataError(f"{source}: {GROUP}/channel_names: repeated element in {list(self.elements)}")
        s = self.sensitivity
        if s is not None and (s.shape != (len(self.elements),) or not (np.isfinite(s) & (s > 0)).all()):
            raise DataError(f"{source}: {GROUP}/sensitivity: expected {len(self.elements)} positive values, got {s}")

    def subset(self, index: np.ndarray | slice) -> Fluorescence:
        """The columns ``index`` (frames) of these counts."""
        return Fluorescence(self.counts[:, index], self.elements, self.sensitivity, self.units)

    def sensitivities(self, energy_kev: float) -> np.ndarray:
        """(ELEMENT,) sensitivity: the file's, or the xraylib default at ``energy_kev``."""
        if self.sensitivity is not None:
            return self.sensitivity.astype(np.float64)
        return default_sensitivity(self.elements, energy_kev)


def atomic_number(symbol: str, source: str = "<memory>") -> int:
    """Z of an element symbol; ``DataError`` naming ``source`` for anything else."""
    try:
        return int(xraylib.SymbolToAtomicNumber(symbol))
    except ValueError:
        raise DataError(f"{source}: {GROUP}/channel_names: {symbol!r} is not an element symbol") from None


def is_element(symbol: str) -> bool:
    """Whether ``symbol`` is an element symbol xraylib knows."""
    try:
        xraylib.SymbolToAtomicNumber(symbol)
    except ValueError:
        return False
    return True


def energy_kev(wavelength_m: float) -> float:
    """Photon energy (keV) of a wavelength (m)."""
    if wavelength_m <= 0:
        raise DataError("geometry: the joint fluorescence link needs the beam energy (wavelength > 0)")
    return HC_KEV_ANGSTROM / (wavelength_m * 1e10)


def mass_attenuation(elements: tuple[str, ...], energy: float) -> np.ndarray:
    """(ELEMENT,) total mass attenuation coefficients mu_e(E0), cm^2/g (xraylib ``CS_Total``)."""
    return np.array([xraylib.CS_Total(atomic_number(e), energy) for e in elements])


def default_sensitivity(elements: tuple[str, ...], energy: float) -> np.ndarray:
    """(ELEMENT,) K-alpha fluorescence cross section (xraylib, cascade) x ``SOLID_ANGLE_FRACTION``."""
    return (
        np.array([xraylib.CS_FluorLine_Kissel_Cascade(atomic_number(e), xraylib.KA_LINE, energy) for e in elements])
        * SOLID_ANGLE_FRACTION
    )


def _names(raw: np.ndarray) -> list[str]:
    return [n.decode() if isinstance(n, bytes) else str(n) for n in np.asarray(raw).reshape(-1)]


def _element(channel: str) -> str | None:
    """The element symbol of a MAPS channel name (``Fe``, ``Fe_K``), or None for other channels."""
    symbol, _, line = channel.partition("_")
    return symbol if line in ("", "K") and is_element(symbol) else None


def read_fluorescence(f: h5py.File, source: Path | str, n_frames: int) -> Fluorescence | None:
    """The fluorescence counts in an open HDF5 file (either layout of the module docstring), or None."""
    src = str(source)
    try:
        if f"{GROUP}/counts" in f:
            if f"{GROUP}/channel_names" not in f:
                raise DataError(f"{src}: {GROUP}/channel_names: missing (one name per row of {GROUP}/counts)")
            counts = np.asarray(f[f"{GROUP}/counts"][()], dtype=np.float32)
            names = tuple(_names(f[f"{GROUP}/channel_names"][()]))
            sens = f"{GROUP}/sensitivity"
            sensitivity = np.asarray(f[sens][()], dtype=np.float64).reshape(-1) if sens in f else None
            units = str(f[GROUP].attrs.get("units", "counts"))
            out = Fluorescence(counts, names, sensitivity, units)
            out.validate(src, n_frames)
            return out
        for counts_path, names_path in MAPS_LAYOUTS:
            if counts_path in f:
                return _read_maps(f, src, counts_path, names_path, n_frames)
    except (OSError, KeyError, TypeError) as exc:
        raise DataError(f"{src}: {GROUP}: unreadable fluorescence ({exc})") from None
    return None


def _read_maps(f: h5py.File, src: str, counts_path: str, names_path: str, n_frames: int) -> Fluorescence:
    if names_path not in f:
        raise DataError(f"{src}: {names_path}: missing (one name per channel of {counts_path})")
    raw = np.asarray(f[counts_path][()], dtype=np.float32)
    channels = _names(f[names_path][()])
    if raw.ndim not in (2, 3) or raw.shape[0] != len(channels):
        raise DataError(
            f"{src}: {counts_path}: expected ({len(channels)}, rows, cols) for the channels, got {raw.shape}"
        )
    flat = raw.reshape(raw.shape[0], -1)
    if flat.shape[1] != n_frames:
        raise DataError(f"{src}: {counts_path}: {flat.shape[1]} map pixels for {n_frames} frames (matched by index)")
    keep: dict[str, int] = {}
    for k, name in enumerate(channels):
        symbol = _element(name)
        if symbol is not None and symbol not in keep:
            keep[symbol] = k
    if not keep:
        raise DataError(f"{src}: {names_path}: no element channels among {channels}")
    out = Fluorescence(np.clip(flat[list(keep.values())], 0, None), tuple(keep), None, "counts/s")
    out.validate(src, n_frames)
    return out


def write_fluorescence(f: h5py.File, fluorescence: Fluorescence) -> None:
    """Write ``fluorescence`` as the ``xrf/`` group of an open HDF5 file."""
    group = f.create_group(GROUP)
    group["counts"] = fluorescence.counts.astype(np.float32)
    group["channel_names"] = np.array(fluorescence.elements, dtype=h5py.string_dtype())
    if fluorescence.sensitivity is not None:
        group["sensitivity"] = fluorescence.sensitivity
    group.attrs["units"] = fluorescence.units
