"""File formats: CXI scans (read/write), tike-style npz scans (read), result HDF5 (write/read).

Units: CXI stores metres and joules; ``ScanData`` holds pixels. CXI translations are *sample*
translations in the lab frame, so the probe moves by their negative. The detector's
``basis_vectors`` (3, 2) (a (2, 3) one is transposed) give the lab direction of the frame's row
and column axes (as cdtools reads them; its default [[0, -p], [-p, 0], [0, 0]] where the file has
none), so (row, col) = pinv(U) (-t) / (dy, dx) with U the unit basis and the sample-plane
pixel dx = lambda z / (M p) in the far field, p / magnification in the near field. Every
conversion is in ``workers.units``.
"""

from __future__ import annotations

import bz2
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from workers import layout
from workers.atomic import replacing
from workers.data import Geometry, ScanData
from workers.errors import DataError
from workers.fluorescence import MAP_UNITS, read_fluorescence, write_fluorescence
from workers.units import (
    DEFAULT_BASIS,
    corners_from_translations,
    detector_distance,
    detector_pixel,
    effective_distance,
    energy_j_from_wavelength,
    sample_pixel,
    translations_from_corners,
    wavelength_from_energy_j,
)

DATA_PATHS = ("entry_1/data_1/data", "entry_1/instrument_1/detector_1/data")
TRANSLATION_PATHS = ("entry_1/sample_1/geometry_1/translation", "entry_1/data_1/translation")
DETECTOR = "entry_1/instrument_1/detector_1"
SOURCE = "entry_1/instrument_1/source_1"
PROBE_PATHS = ("entry_1/instrument_1/source_1/probe", "entry_1/probe_1/data")
BACKGROUND_NAMES = ("dark", "data_dark", "background")
EXTRA = "entry_1/ptychostream"


def load_scan(path: str | Path, *, near_field: bool | None = None, focus_distance: float | None = None) -> ScanData:
    """Read a scan from CXI (``.cxi``/``.h5``) or a tike-style ``.npz`` / ``.npz.bz2``.

    ``near_field`` overrides the propagation recorded in the file (CXI files of other tools
    do not record it; far field is assumed). ``focus_distance`` (m, focus to sample) turns on
    the Fresnel-scaling (cone-beam) geometry of a near-field setup.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    name = path.name.lower()
    if name.endswith((".npz", ".npz.bz2")):
        return read_tike_npz(path)
    return read_cxi(path, near_field=near_field, focus_distance=focus_distance)


def _first(f: h5py.File, paths: tuple[str, ...], what: str, src: Path) -> h5py.Dataset:
    for p in paths:
        if f.get(p) is not None:
            return f[p]
    raise DataError(f"{src}: {what}: missing (looked for {', '.join(paths)})")


def _read(node: h5py.Dataset, src: Path) -> Any:
    """The whole dataset ``node``; a damaged one (a corrupt chunk, a filter that fails) names file and field."""
    try:
        return node[()]
    except (OSError, ValueError) as exc:
        raise DataError(f"{src}: {node.name.lstrip('/')}: unreadable ({exc})") from None


def _scalar(f: h5py.File, path: str, src: Path) -> float:
    if path not in f:
        raise DataError(f"{src}: {path}: missing")
    value = float(np.asarray(_read(f[path], src)).reshape(-1)[0])
    if not np.isfinite(value) or value <= 0:
        raise DataError(f"{src}: {path}: must be a positive number, got {value}")
    return value


def _square(frames: np.ndarray, src: Path) -> np.ndarray:
    """Centre-crop frames (N, Y, X) to the largest square."""
    if frames.ndim != 3:
        raise DataError(f"{src}: data: expected a stack of frames (N, Y, X), got shape {frames.shape}")
    n, y, x = frames.shape
    m = min(y, x)
    oy, ox = (y - m) // 2, (x - m) // 2
    return frames[:, oy : oy + m, ox : ox + m]


def read_cxi(path: Path, *, near_field: bool | None = None, focus_distance: float | None = None) -> ScanData:
    """Read a CXI file as written by other ptychography tools (see the module docstring for units)."""
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: not a readable HDF5/CXI file ({exc})") from None
    try:
        with f:
            return _read_cxi_open(f, path, near_field, focus_distance)
    except (KeyError, TypeError) as exc:
        raise DataError(f"{path}: malformed CXI file ({exc})") from None


def _read_cxi_open(f: h5py.File, path: Path, near_field: bool | None, focus_distance: float | None) -> ScanData:
    raw = _read(_first(f, DATA_PATHS, "data", path), path)
    frames = _square(np.asarray(raw, dtype=np.float32), path)
    for name in BACKGROUND_NAMES:
        key = f"{DETECTOR}/{name}"
        if key in f:
            background = _square(np.asarray(_read(f[key], path), dtype=np.float32).reshape((1, *raw.shape[-2:])), path)
            frames = np.clip(frames - background, 0, None)
            break
    translation = np.asarray(_read(_first(f, TRANSLATION_PATHS, "translation", path), path), dtype=np.float64)
    if translation.ndim != 2 or translation.shape[1] not in (2, 3):
        raise DataError(f"{path}: translation: expected shape (N, 3), got {translation.shape}")
    translation = np.pad(translation, ((0, 0), (0, 3 - translation.shape[1])))
    basis = DEFAULT_BASIS
    if f"{DETECTOR}/basis_vectors" in f:
        basis = np.asarray(_read(f[f"{DETECTOR}/basis_vectors"], path), dtype=np.float64)
        if basis.shape == (2, 3):  # one vector per row; cdtools reads both layouts
            basis = basis.T
        norms = np.linalg.norm(basis, axis=0) if basis.shape == (3, 2) else np.zeros(1)
        if basis.shape != (3, 2) or not (norms > 0).all():
            raise DataError(f"{path}: basis_vectors: expected a (3, 2) matrix of non-zero columns, got {basis}")
        basis = basis / norms
    distance = _scalar(f, f"{DETECTOR}/distance", path)
    px = _scalar(f, f"{DETECTOR}/x_pixel_size", path)
    py = _scalar(f, f"{DETECTOR}/y_pixel_size", path) if f"{DETECTOR}/y_pixel_size" in f else px
    if f"{SOURCE}/wavelength" in f:
        wavelength = _scalar(f, f"{SOURCE}/wavelength", path)
    else:
        wavelength = wavelength_from_energy_j(_scalar(f, f"{SOURCE}/energy", path))
    mask = None
    if f"{DETECTOR}/mask" in f:
        bad = np.asarray(_read(f[f"{DETECTOR}/mask"], path))
        mask = _square(bad.reshape((1, *bad.shape[-2:])), path)[0] == 0
    probe = None
    for p in PROBE_PATHS:
        if p in f:
            probe = np.asarray(_read(f[p], path), dtype=np.complex64)
            probe = probe.reshape((-1, *probe.shape[-2:]))
            break
    extra = f[EXTRA] if EXTRA in f else None
    if near_field is None:
        near_field = extra is not None and extra.attrs.get("propagation", "far") == "near"
    if focus_distance is None and extra is not None and "focus_distance" in extra.attrs:
        focus_distance = float(extra.attrs["focus_distance"])
    truth = {}
    if f"{EXTRA}/truth" in f:
        f[f"{EXTRA}/truth"].visititems(
            lambda k, v: truth.__setitem__(k, np.asarray(_read(v, path))) if isinstance(v, h5py.Dataset) else None
        )

    m = frames.shape[-1]
    kind = "near" if near_field else "far"
    dy, dx = (sample_pixel(kind, p, wavelength, distance, m, focus_distance) for p in (py, px))
    if kind == "near":
        geometry = Geometry("near", wavelength, effective_distance(distance, focus_distance), dx, focus_distance or 0.0)
        if abs(dy - dx) > 1e-3 * dx:
            raise DataError(f"{path}: x_pixel_size/y_pixel_size: near-field needs square pixels, got {px} and {py}")
    else:
        geometry = Geometry("far", wavelength, distance, dx)
    corners = corners_from_translations(translation, (dy, dx), m, basis)
    if translation.shape[0] != frames.shape[0]:
        raise DataError(f"{path}: translation: {translation.shape[0]} positions for {frames.shape[0]} frames")
    return ScanData(frames, corners, geometry, mask, probe, str(path), truth, read_fluorescence(f, path, len(frames)))


def read_tike_npz(path: Path) -> ScanData:
    """Read a scan in tike's npz layout: ``data`` FFT-shifted intensities, ``scan`` pixel corners, ``probe``."""
    try:
        with bz2.open(path) if path.name.lower().endswith(".bz2") else open(path, "rb") as fh:
            z = dict(np.load(fh, allow_pickle=False))
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: not a readable npz file ({exc})") from None
    for key in ("data", "scan"):
        if key not in z:
            raise DataError(f"{path}: {key}: missing (tike npz needs data, scan and optionally probe)")
    data = np.asarray(z["data"], dtype=np.float32)
    data = data.reshape((-1, *data.shape[-2:]))
    scan = np.asarray(z["scan"], dtype=np.float64).reshape(-1, 2)
    probe = np.asarray(z["probe"], dtype=np.complex64) if "probe" in z else None
    if probe is not None:
        probe = probe.reshape((-1, *probe.shape[-2:]))
    frames = layout.to_detector(data, "far")
    return ScanData(frames, scan, Geometry("far"), None, probe, str(path))


def write_cxi(path: str | Path, data: ScanData, truth: Mapping[str, np.ndarray] | None = None) -> None:
    """Write ``data`` as CXI (metres, joules); ``truth`` arrays go under ``entry_1/ptychostream/truth``."""
    g = data.geometry
    if g.wavelength <= 0 or g.distance <= 0 or g.pixel_size <= 0:
        raise DataError(f"{path}: geometry: writing CXI needs wavelength, distance and pixel size, got {g}")
    m, focus = data.frame_size, g.focus_distance or None
    distance = g.distance
    if g.kind == "near" and focus:  # the file holds the real detector distance z: z_eff = z f / (f + z)
        if g.distance >= focus:
            raise DataError(f"{path}: geometry: effective distance {g.distance} m must be below the focus distance")
        distance = detector_distance(g.distance, focus)
    pixel = detector_pixel(g.kind, g.pixel_size, g.wavelength, distance, m, focus)
    translation = translations_from_corners(data.positions, g.pixel_size, m)
    with h5py.File(path, "w") as f:
        f["cxi_version"] = 160
        f["number_of_entries"] = 1
        det = f.create_group(DETECTOR)
        frames = data.intensities.astype(np.float32)
        det.create_dataset("data", data=frames, chunks=(1, m, m), compression="gzip", compression_opts=1)
        det["distance"] = distance
        det["x_pixel_size"] = pixel
        det["y_pixel_size"] = pixel
        det["basis_vectors"] = DEFAULT_BASIS * pixel
        if data.mask is not None:
            det["mask"] = (~data.mask).astype(np.uint32)
        src = f.create_group(SOURCE)
        src["energy"] = energy_j_from_wavelength(g.wavelength)
        src["wavelength"] = g.wavelength
        if data.probe is not None:
            src["probe"] = data.probe
        f.create_group("entry_1/sample_1/geometry_1")["translation"] = translation
        f["entry_1/data_1/data"] = h5py.SoftLink(f"/{DETECTOR}/data")
        f["entry_1/data_1/translation"] = h5py.SoftLink("/entry_1/sample_1/geometry_1/translation")
        extra = f.create_group(EXTRA)
        extra.attrs["propagation"] = g.kind
        if focus:
            extra.attrs["focus_distance"] = focus
        for key, value in (truth or {}).items():
            extra.create_dataset(f"truth/{key}", data=value)
        if data.fluorescence is not None:
            write_fluorescence(f, data.fluorescence)


def write_result(
    path: str | Path,
    state: Mapping[str, np.ndarray],
    *,
    loss: np.ndarray,
    time_s: np.ndarray,
    attrs: Mapping[str, Any],
) -> None:
    """Write a result HDF5 (DESIGN.md): object, probe, positions, origin, history/{loss,time_s}, attributes,
    and ``elements/<symbol>`` (H, W) maps (attributes ``units``, ``element``) where a joint XRF engine ran.

    Atomic and durable (``workers.atomic``): a reader never sees half a file.
    """
    with replacing(path) as tmp, h5py.File(tmp, "w") as f:
        f["object"] = state["object"].astype(np.complex64)
        f["probe"] = state["probe"].astype(np.complex64)
        f["positions"] = state["positions"].astype(np.float64)
        f["origin"] = np.asarray(state["origin"], dtype=np.float64)
        f["history/loss"] = np.asarray(loss, dtype=np.float64)
        f["history/time_s"] = np.asarray(time_s, dtype=np.float64)
        for key, value in state.items():
            if key.startswith("elements/"):
                f[key] = np.asarray(value, dtype=np.float32)
                f[key].attrs.update(units=MAP_UNITS, element=key.partition("/")[2])
        for key, value in attrs.items():
            f.attrs[key] = value


def result_load_options(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """``load_scan`` keyword arguments that read a scan in the geometry a result records (empty if it records none)."""
    if attrs.get("propagation") not in ("far", "near"):
        return {}
    focus = float(attrs.get("focus_distance", 0.0))
    return {"near_field": attrs["propagation"] == "near", "focus_distance": focus if focus > 0 else None}


def read_result(path: str | Path) -> dict[str, Any]:
    """Read a result HDF5 back: arrays by name, ``loss``/``time_s`` histories and ``attrs``."""
    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: not a readable result file ({exc})") from None
    with f:
        for key in ("object", "probe", "positions"):
            if key not in f:
                raise DataError(f"{path}: {key}: missing; not a PtychoStream result file")
        out: dict[str, Any] = {k: _read(f[k], path) for k in ("object", "probe", "positions")}
        out["origin"] = _read(f["origin"], path) if "origin" in f else np.zeros(2)
        out["loss"] = _read(f["history/loss"], path) if "history/loss" in f else np.zeros(0)
        out["time_s"] = _read(f["history/time_s"], path) if "history/time_s" in f else np.zeros(0)
        out["attrs"] = dict(f.attrs)
        if "elements" in f:
            out["elements"] = {k: _read(v, path) for k, v in f["elements"].items()}
    return out
