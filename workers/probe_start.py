"""The probe a reconstruction starts from: a user's file or optics parameters, the scan's own
guess, or the best of several probes derived from the data.

Far field: the mean pattern's square root is the probe's pupil amplitude (the object scatters
little of the light outside it); what the data leave open is the pupil's phase. Candidates are
the pupil (raw, or its thresholded support) with a defocus exp(i pi (c_y f_y^2 + c_x f_x^2)) of
either sign over a range of beam widths, plus flat discs in real space (structured beams whose
pupil is a speckle); each is scored by the amplitude residual over one mini-batch rPIE epoch on a
compact subset of the frames (object starting at ones), and the best one's defocus is then
refined per axis (astigmatism).
Near field: the mean hologram's amplitude, back-propagated with and without a phase curvature,
scored alike. The search costs about 3-8% of a default 200-epoch run (bench_start.py).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import h5py
import numpy as np
import torch

from workers import layout, physics
from workers.data import ScanData
from workers.engines.registry import make_engine
from workers.errors import DataError
from workers.probe_spec import ProbeStart
from workers.state import ReconState

__all__ = ["ProbeStart", "beam_diameter", "initial_probe", "read_probe_file"]

SEARCH_FRAMES = 64  # frames (nearest the scan's centre) each candidate is scored on
SEARCH_BATCH = 8
BEAM_FRACTIONS = (0.08, 0.15, 0.22, 0.3, 0.4, 0.5, 0.6, 0.7)  # defocused beam widths tried, fractions of the frame
DISC_FRACTIONS = (0.2, 0.35, 0.5)  # flat real-space discs tried, fractions of the frame
ASTIGMATISM = ((0.7, 1.4), (0.85, 1.18))  # per-axis defocus factors tried around the best, one axis at a time
NEAR_CURVATURES = (0.0, -16.0, -4.0, 4.0, 16.0)  # hologram phase at the frame's edge, radians
FILE_PATHS = ("probe", "entry_1/instrument_1/source_1/probe", "entry_1/probe_1/data")


def beam_diameter(probe: np.ndarray) -> float:
    """Beam diameter (pixels): 2 sqrt(2) x the RMS radius of sum_k |P_k|^2 (a uniform disc's width)."""
    p = np.abs(probe) ** 2
    p = p.reshape(-1, *p.shape[-2:]).sum(0)
    yy, xx = np.mgrid[: p.shape[0], : p.shape[1]]
    w = p / p.sum()
    cy, cx = (w * yy).sum(), (w * xx).sum()
    return float(2 * np.sqrt(2 * (w * ((yy - cy) ** 2 + (xx - cx) ** 2)).sum()))


def initial_probe(
    data: ScanData,
    n_modes: int = 1,
    start: ProbeStart | None = None,
    *,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> tuple[np.ndarray, str]:
    """The start probe (MODE, M, M) complex64 and a one-line record of where it came from.

    In order: ``start.file``; ``start``'s optics parameters (a disc of ``diameter`` pixels
    with the quadratic phase of ``defocus`` metres, or the data's pupil defocused by
    ``defocus``); the scan file's probe guess; the data-derived search (module docstring).
    Extra modes are the first mode times low-order phase ramps at about 10% of its power.
    The probe is scaled so that sum |P|^2 equals the mean frame intensity.
    """
    start = start or ProbeStart()
    m = data.frame_size
    if start.file is not None:
        probe, record = read_probe_file(start.file, m), f"file: {start.file}"
    elif not start.empty:
        probe, record = _optics_probe(data, start.diameter, start.defocus), _optics_record(start)
    elif data.probe is not None:
        probe, record = data.probe.astype(np.complex64), "guess in file"
    else:
        probe, record = _search(data, torch.device(device), seed)
    return _scaled(_with_modes(probe, n_modes), data), record


def read_probe_file(path: str | Path, size: int) -> np.ndarray:
    """A probe (MODE, size, size) complex64 from a result/product HDF5, a CXI file, or an .npy/.npz.

    Raises ``DataError`` naming the file and field when the file has no probe or the wrong size.
    """
    path = Path(path)
    field = "probe"
    try:
        if path.suffix == ".npy":
            probe = np.load(path, allow_pickle=False)
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.keys())
                if "probe" not in keys and len(keys) != 1:
                    raise DataError(f"{path}: probe: no 'probe' array (has {', '.join(keys) or 'nothing'})")
                field = "probe" if "probe" in keys else keys[0]
                probe = z[field]
        else:
            with h5py.File(path, "r") as f:
                found = [p for p in FILE_PATHS if isinstance(f.get(p), h5py.Dataset)]
                if not found:
                    raise DataError(f"{path}: probe: none of {', '.join(FILE_PATHS)} is in the file")
                field = found[0]
                probe = f[field][()]
    except DataError:
        raise
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: probe: cannot read the file ({exc})") from None
    probe = np.asarray(probe)
    if probe.ndim == 4:  # ptychodus: (orthogonal-probe-relaxation mode, incoherent mode, Y, X)
        probe = probe[0]
    if probe.ndim not in (2, 3) or probe.shape[-2:] != (size, size):
        raise DataError(f"{path}: {field}: expected shape (K, {size}, {size}) to match the frames, got {probe.shape}")
    if not np.issubdtype(probe.dtype, np.number) or not np.isfinite(probe).all():
        raise DataError(f"{path}: {field}: not a finite numeric array")
    probe = probe.reshape(-1, size, size).astype(np.complex64)
    if not np.abs(probe).any():
        raise DataError(f"{path}: {field}: the probe is zero everywhere")
    return probe


def _scaled(probe: np.ndarray, data: ScanData) -> np.ndarray:
    """``probe`` scaled so that sum |P|^2 (all modes) is the mean frame intensity over the valid pixels (masked
    pixels, e.g. saturated ones, would count whatever they hold)."""
    power = float(_mean_pattern(data).sum())
    return (probe * np.sqrt(power / (np.abs(probe) ** 2).sum())).astype(np.complex64)


def _with_modes(probe: np.ndarray, n_modes: int) -> np.ndarray:
    probe = probe[:n_modes]
    cols = np.arange(probe.shape[-1]) / probe.shape[-1]
    while len(probe) < n_modes:
        ramp = np.exp(2j * np.pi * len(probe) * cols)[None, None, :]
        probe = np.concatenate([probe, 0.3 * probe[:1] * ramp])
    return probe.astype(np.complex64)


def _mean_pattern(data: ScanData) -> np.ndarray:
    """The mean frame (model layout, masked pixels zero), float64."""
    mean = data.intensities.mean(0, dtype=np.float64)
    if data.mask is not None:
        mean = np.where(data.mask, mean, 0.0)
    return layout.to_model(mean, data.geometry.kind)


def _centred_radius(m: int) -> np.ndarray:
    """Distance (pixels) of each pixel from the window's centre (M/2, M/2)."""
    yy, xx = np.mgrid[:m, :m] - m / 2
    return np.sqrt(yy**2 + xx**2)


def _disc(m: int, diameter: float) -> np.ndarray:
    """A flat real-space disc of ``diameter`` pixels with a one-pixel soft edge, centred."""
    return 1 / (1 + np.exp(_centred_radius(m) - diameter / 2))


def defocused(pupil: np.ndarray, cy: float, cx: float) -> np.ndarray:
    """Real-space probe (centred) of the far-field ``pupil`` (DC at [0, 0]) times exp(i pi (cy fy^2 + cx fx^2))."""
    f = np.fft.fftfreq(pupil.shape[-1])
    phase = np.pi * (cy * f[:, None] ** 2 + cx * f[None, :] ** 2)
    return np.fft.fftshift(np.fft.ifft2(pupil * np.exp(1j * phase)))


def _pupils(mean: np.ndarray) -> tuple[dict[str, np.ndarray], float]:
    """Candidate pupil amplitudes from the mean pattern, and the pupil's outer radius (cycles/pixel)."""
    f = np.fft.fftfreq(mean.shape[-1])
    fr = np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    gauss = np.exp(-2 * np.pi**2 * fr**2)  # a one-pixel Gaussian blur, in the transform domain
    smooth = np.abs(np.fft.ifft2(np.fft.fft2(mean) * gauss))
    support = smooth > 0.1 * smooth.max()
    radius = float(np.quantile(fr[support], 0.99)) if support.any() else 0.25
    soft = np.fft.ifft2(np.fft.fft2(support.astype(float)) * gauss).real
    return {"sqrt": np.sqrt(mean), "support": np.clip(soft, 0, 1)}, max(radius, 2 / mean.shape[-1])


def _far_field_candidates(mean: np.ndarray) -> list[tuple[str, np.ndarray, tuple[str, float, float] | None]]:
    """(label, probe, (pupil name, c_y, c_x) or None) for every far-field candidate."""
    m = mean.shape[-1]
    pupils, radius = _pupils(mean)
    out: list[tuple[str, np.ndarray, tuple[str, float, float] | None]] = []
    for name, pupil in pupils.items():
        out.append((f"{name} pupil in focus", defocused(pupil, 0, 0), (name, 0.0, 0.0)))
        for c in (sign * frac * m / (2 * radius) for frac in BEAM_FRACTIONS for sign in (1, -1)):
            out.append((f"{name} pupil, defocus {c:+.0f} px2", defocused(pupil, c, c), (name, c, c)))
    for frac in DISC_FRACTIONS:
        out.append((f"disc {frac:.2f} M", _disc(m, frac * m).astype(complex), None))
    return out


def _near_field_candidates(data: ScanData, mean: np.ndarray) -> list[tuple[str, np.ndarray, None]]:
    """Back-propagations of the mean hologram amplitude with phase curvatures, and the amplitude as is."""
    m = data.frame_size
    r2 = (_centred_radius(m) / (m / 2)) ** 2
    prop = physics.propagator(data.geometry, m, "cpu")
    out: list[tuple[str, np.ndarray, None]] = [("hologram amplitude", np.sqrt(mean).astype(complex), None)]
    for k in NEAR_CURVATURES:
        wave = torch.from_numpy((np.sqrt(mean) * np.exp(1j * k * r2)).astype(np.complex64))
        out.append((f"back-propagated, curvature {k:+.0f} rad", prop.adjoint(wave).numpy().astype(complex), None))
    return out


def _search_subset(data: ScanData) -> ScanData:
    """The ``SEARCH_FRAMES`` frames nearest the scan's centre (a compact, overlapping patch)."""
    if data.n_frames <= SEARCH_FRAMES:
        return data
    pos = data.positions
    order = np.argsort(((pos - np.median(pos, 0)) ** 2).sum(1), kind="stable")
    return data.subset(np.sort(order[:SEARCH_FRAMES]))


def _score(subset: ScanData, probe: np.ndarray, device: torch.device, seed: int) -> float:
    """Amplitude residual over one mini-batch rPIE epoch from ``probe`` and a unit object (inf if it diverged).

    One epoch, not more: later epochs favour beams too small for the data (less overlap lets the
    object fit each frame alone), while the first measures how well the probe explains the frames.
    """
    state = ReconState.initial(_scaled(probe[None], subset), device=device)
    engine = make_engine("rpie", state, subset.geometry, {"batch_size": SEARCH_BATCH}, mask=subset.mask, seed=seed)
    engine.add_frames(subset.intensities, subset.positions)
    loss = engine.iterate(1)[0]
    return loss if math.isfinite(loss) else math.inf


def _search(data: ScanData, device: torch.device, seed: int) -> tuple[np.ndarray, str]:
    """The best-scoring data-derived candidate (module docstring) and its record."""
    t0 = time.perf_counter()
    mean = _mean_pattern(data)
    subset = _search_subset(data)
    far = data.geometry.kind == "far"
    candidates = _far_field_candidates(mean) if far else _near_field_candidates(data, mean)
    scored = [(_score(subset, p, device, seed), label, p, params) for label, p, params in candidates]
    best = min(scored, key=lambda s: s[0])
    if far and best[3] is not None and best[3][1] != 0:
        name, cy, cx = best[3]
        pupil = _pupils(mean)[0][name]
        for factors in ASTIGMATISM:
            for axis in (0, 1):
                for factor in factors:
                    ry, rx = (cy * factor, cx) if axis == 0 else (cy, cx * factor)
                    probe = defocused(pupil, ry, rx)
                    label = f"{name} pupil, defocus {ry:+.0f}/{rx:+.0f} px2 (row/col)"
                    scored.append((_score(subset, probe, device, seed), label, probe, (name, ry, rx)))
                best = min(scored, key=lambda s: s[0])
                _, cy, cx = best[3]
    score, label, probe, _ = best
    seconds = time.perf_counter() - t0
    record = (
        f"data: {label}, beam {beam_diameter(probe) / data.frame_size:.2f} M "
        f"(best of {len(scored)}, residual {score:.3g}, {seconds:.1f} s)"
    )
    return probe[None].astype(np.complex64), record


def _optics_probe(data: ScanData, diameter: float | None, defocus: float | None) -> np.ndarray:
    """A disc of ``diameter`` px with the quadratic phase of ``defocus`` m; no diameter: the data's pupil, defocused."""
    g, m = data.geometry, data.frame_size
    if defocus and (g.wavelength <= 0 or g.pixel_size <= 0):
        raise DataError(f"{data.source}: geometry: a probe defocus needs the wavelength and the pixel size, got {g}")
    if diameter is None:
        mean = _mean_pattern(data)
        if g.kind != "far":
            raise DataError(f"{data.source}: probe: a near-field probe start needs a diameter")
        c = -(defocus or 0.0) * g.wavelength / g.pixel_size**2
        return defocused(np.sqrt(mean), c, c)[None].astype(np.complex64)
    probe = _disc(m, diameter).astype(complex)
    if defocus:
        r = _centred_radius(m) * g.pixel_size
        probe = probe * np.exp(1j * np.pi * r**2 / (g.wavelength * defocus))
    return probe[None].astype(np.complex64)


def _optics_record(start: ProbeStart) -> str:
    parts = [f"diameter {start.diameter:g} px" if start.diameter is not None else "data pupil"]
    if start.defocus is not None:
        parts.append(f"defocus {start.defocus:g} m")
    return "optics: " + ", ".join(parts)
