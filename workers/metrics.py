"""Quality metrics: data residuals of a state against measured frames, and errors against a known truth.

Data metrics (no truth needed), over all valid pixels of all frames:
* ``amplitude_residual``: sum || |Psi| - sqrt(I) ||^2 / sum I (the history loss of every engine);
* ``gaussian_nll``: mean (|Psi| - sqrt(I))^2, the amplitude (variance-stabilised) Gaussian NLL;
* ``poisson_nll``: mean (I_m - I + I log(I / I_m)), the Poisson NLL minus its saturated value (>= 0).

Truth metrics compare a reconstructed object with the true one on the illuminated region,
after registration (integer and sub-pixel shift, Guizar-Sicairos et al., Opt. Lett. 33
(2008) 156) and removal of the global complex scale (phase and amplitude):
cRMS, FRC, aPSNR and aSSIM on amplitudes, and the position error after removing the mean shift.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from workers import layout, physics
from workers.data import ScanData
from workers.images import illuminated_region


def model_intensities(data: ScanData, obj: np.ndarray, probe: np.ndarray, positions: np.ndarray, batch: int = 64):
    """Yield (model intensities, measured intensities) per batch, both in model layout (``workers.layout``)."""
    prop = physics.propagator(data.geometry, data.frame_size, "cpu")
    o = torch.from_numpy(np.asarray(obj, dtype=np.complex64))
    p = torch.from_numpy(np.asarray(probe, dtype=np.complex64))
    for start in range(0, data.n_frames, batch):
        pos = torch.from_numpy(np.asarray(positions[start : start + batch], dtype=np.float64))
        corner, frac = physics.split_positions(pos)
        patches = physics.patches(o, corner, frac, data.frame_size, physics.SUBPIXEL_PAD)
        model = physics.intensity(prop.forward(physics.exit_waves(p, patches))).numpy()
        measured = layout.to_model(data.intensities[start : start + batch], data.geometry.kind)
        yield model, measured


def data_metrics(data: ScanData, obj: np.ndarray, probe: np.ndarray, positions: np.ndarray) -> dict[str, float]:
    """Amplitude residual and Gaussian / Poisson NLL of the state (object-array positions) on ``data``."""
    full = np.ones((data.frame_size,) * 2, bool)
    mask = full if data.mask is None else layout.to_model(data.mask, data.geometry.kind)
    sq = pois = total = 0.0
    count = 0
    for model, measured in model_intensities(data, obj, probe, positions):
        m, i = model[:, mask].astype(np.float64), measured[:, mask].astype(np.float64)
        sq += float(((np.sqrt(m) - np.sqrt(i)) ** 2).sum())
        m = np.maximum(m, 1e-12)
        pois += float((m - i + np.where(i > 0, i * np.log(np.maximum(i, 1e-12) / m), 0.0)).sum())
        total += float(i.sum())
        count += i.size
    return {"amplitude_residual": sq / total, "gaussian_nll": sq / count, "poisson_nll": pois / count}


def _upsampled_dft(data: np.ndarray, size: int, factor: int, offset: tuple[float, float]) -> np.ndarray:
    """The inverse DFT of ``data`` sampled on a size x size grid of spacing 1/factor around ``offset``."""
    rows, cols = data.shape
    kr = np.fft.ifftshift(np.arange(rows)) - rows // 2
    kc = np.fft.ifftshift(np.arange(cols)) - cols // 2
    r = (np.arange(size) - offset[0])[:, None]
    c = (np.arange(size) - offset[1])[:, None]
    er = np.exp(2j * np.pi * r * kr[None, :] / (rows * factor))
    ec = np.exp(2j * np.pi * c * kc[None, :] / (cols * factor))
    return er @ data @ ec.T


def register(reference: np.ndarray, moving: np.ndarray, factor: int = 20) -> np.ndarray:
    """Shift (row, col) that best aligns ``moving`` onto ``reference``, to 1/``factor`` pixel."""
    spec = np.fft.fft2(reference) * np.fft.fft2(moving).conj()
    cc = np.abs(np.fft.ifft2(spec))
    peak = np.array(np.unravel_index(np.argmax(cc), cc.shape), dtype=float)
    shape = np.array(cc.shape)
    peak = np.where(peak > shape // 2, peak - shape, peak)
    size = int(math.ceil(factor * 1.5))
    centre = size // 2
    up = np.abs(_upsampled_dft(spec, size, factor, tuple(centre - peak * factor)))
    fine = np.array(np.unravel_index(np.argmax(up), up.shape), dtype=float) - centre
    return peak + fine / factor


def shift_image(image: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Periodic Fourier shift of ``image`` by ``shift`` (row, col) pixels."""
    t = torch.from_numpy(image.astype(np.complex128))[None]
    return physics.fourier_shift(t, torch.from_numpy(np.asarray(shift, dtype=np.float64)[None])).numpy()[0]


def frc(a: np.ndarray, b: np.ndarray, n_bins: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fourier ring correlation of two equal-size images: (spatial frequency in 1/px, FRC)."""
    fa, fb = np.fft.fft2(a), np.fft.fft2(b)
    fy, fx = np.fft.fftfreq(a.shape[0])[:, None], np.fft.fftfreq(a.shape[1])[None, :]
    radius = np.sqrt(fy**2 + fx**2)
    n_bins = n_bins or min(a.shape) // 2
    edges = np.linspace(0, 0.5, n_bins + 1)
    which = np.digitize(radius, edges) - 1
    ok = (which >= 0) & (which < n_bins)
    num = np.bincount(which[ok], (fa * fb.conj())[ok].real, n_bins)
    da = np.bincount(which[ok], (np.abs(fa) ** 2)[ok], n_bins)
    db = np.bincount(which[ok], (np.abs(fb) ** 2)[ok], n_bins)
    return 0.5 * (edges[1:] + edges[:-1]), num / np.sqrt(da * db + 1e-30)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """``image`` (real) convolved with a Gaussian of ``sigma`` px (periodic, in Fourier space)."""
    fy, fx = np.fft.fftfreq(image.shape[0])[:, None], np.fft.fftfreq(image.shape[1])[None, :]
    kernel = np.exp(-2 * (math.pi * sigma) ** 2 * (fy**2 + fx**2))
    return np.fft.ifft2(np.fft.fft2(image) * kernel).real


def ssim(a: np.ndarray, b: np.ndarray, sigma: float = 1.5) -> float:
    """Mean structural similarity (Wang et al. 2004) of two real images, Gaussian window ``sigma``."""
    data_range = float(max(np.ptp(a), np.ptp(b), 1e-12))
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = gaussian_blur(a, sigma), gaussian_blur(b, sigma)
    var_a, var_b = gaussian_blur(a * a, sigma) - mu_a**2, gaussian_blur(b * b, sigma) - mu_b**2
    cov = gaussian_blur(a * b, sigma) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


MIN_OVERLAP = 0.5  # a registration must keep this fraction of the illuminated region to be compared
TAPER_PX = 4.0  # width (Gaussian sigma, px) of the soft edge FRC puts on the compared region


def _taper(region: np.ndarray, sigma: float = TAPER_PX) -> np.ndarray:
    """A window that is 1 deep inside ``region``, 0 outside and falls smoothly at its edges
    (the region blurred by a Gaussian of ``sigma`` px, kept inside the region)."""
    return np.clip(2 * gaussian_blur(region.astype(float), sigma) - 1, 0, 1) * region


def masked_frc(a: np.ndarray, b: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """FRC of two images compared on ``region`` only: each minus its mean there, under a soft-edged window,
    so that the region's edge (common to both) does not correlate them."""
    w = _taper(region)
    return frc((a - a[region].mean()) * w, (b - b[region].mean()) * w)


def _bounding_box(region: np.ndarray) -> tuple[slice, slice]:
    rows, cols = np.nonzero(region)
    return slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1)


def _phase_ramp(product: np.ndarray, pad: int = 4, factor: int = 10) -> np.ndarray:
    """Frequency (row, col) in cycles/px maximising |sum product(y, x) exp(-2 pi i (k_y y + k_x x))|:
    the peak of a ``pad``-times zero-padded FFT, refined on a grid ``factor`` times finer."""
    shape = np.array(product.shape)
    spectrum = np.abs(np.fft.fft2(product, s=tuple(pad * shape)))
    peak = np.array(np.unravel_index(np.argmax(spectrum), spectrum.shape), dtype=float)
    coarse = np.where(peak >= pad * shape / 2, peak - pad * shape, peak) / (pad * shape)
    steps = (np.arange(2 * factor + 1) - factor) / factor
    ky, kx = (coarse[i] + steps / (pad * shape[i]) for i in (0, 1))
    er = np.exp(-2j * np.pi * ky[:, None] * np.arange(shape[0])[None, :])
    ec = np.exp(-2j * np.pi * kx[:, None] * np.arange(shape[1])[None, :])
    fine = np.unravel_index(np.argmax(np.abs(er @ product @ ec.T)), (len(ky), len(kx)))
    return np.array([ky[fine[0]], kx[fine[1]]])


def _aligned(
    ref: np.ndarray, mov: np.ndarray, win: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """Register ``mov`` onto ``ref`` (crops on the region's bounding box): shift, then a linear phase ramp.

    Returns (registered and complex-scaled image, inner region, shift (row, col) px, ramp (row, col)
    cycles/px, cRMS).
    """
    yy, xx = np.mgrid[: ref.shape[0], : ref.shape[1]]
    ramp = np.zeros(2)
    for _ in range(2):  # a ramp spoils the shift's correlation peak: estimate both twice
        deramped = mov * np.exp(2j * np.pi * (ramp[0] * yy + ramp[1] * xx))
        shift = register((ref - ref[win].mean()) * win, (deramped - deramped[win].mean()) * win)
        moved = shift_image(deramped, shift)
        inner = win.copy()
        edge = int(np.ceil(np.abs(shift).max())) + 2
        inner[:edge], inner[-edge:], inner[:, :edge], inner[:, -edge:] = False, False, False, False
        ramp += _phase_ramp(np.where(inner, ref * moved.conj(), 0))
    mov = shift_image(mov * np.exp(2j * np.pi * (ramp[0] * yy + ramp[1] * xx)), shift)
    if inner.sum() < MIN_OVERLAP * win.sum():  # a shift that leaves too little to compare: not a registration
        return mov, inner, shift, ramp, math.inf
    scaled, crms = _scaled(ref, mov, inner)
    return scaled, inner, shift, ramp, crms


def _scaled(ref: np.ndarray, mov: np.ndarray, region: np.ndarray) -> tuple[np.ndarray, float]:
    """``mov`` times the complex scale that best fits ``ref`` on ``region``, and the cRMS that remains."""
    r, t = mov[region], ref[region]
    scale = (r.conj() * t).sum() / max(float((np.abs(r) ** 2).sum()), 1e-30)
    return scale * mov, float(np.sqrt((np.abs(scale * r - t) ** 2).sum() / (np.abs(t) ** 2).sum()))


def truth_metrics(
    obj: np.ndarray,
    origin: np.ndarray,
    truth: dict[str, np.ndarray],
    positions: np.ndarray | None = None,
) -> dict[str, Any]:
    """Compare a reconstructed object (H, W) (object coords = scan coords + ``origin``) with the truth.

    The truth's object array is the scan's frame of reference. Registration removes what the
    data cannot fix: a shift, a linear phase ramp, the global complex scale, and the twin image
    (complex conjugate rotated by 180 degrees), whichever of the object and its twin fits better.
    A shift that leaves less than ``MIN_OVERLAP`` of the illuminated region to compare is no
    registration (a small overlap fits anything); with none left, the object is compared as placed.
    FRC compares the two on the region, each minus its mean there, under a soft-edged window.
    Returns cRMS, FRC (curve and the frequency where it first drops below 0.5), aPSNR (dB) and
    aSSIM on the illuminated region, the registration shift, the phase ramp (cycles/px), whether
    the twin was taken, and the RMS position error when ``positions`` are given.
    """
    true_obj = truth["object"]
    region = illuminated_region(truth["probe"], truth["positions"], true_obj.shape)
    rows, cols = _bounding_box(region)
    aligned = np.ones_like(true_obj)
    o = np.round(origin).astype(int)
    src_r = slice(max(o[0], 0), min(o[0] + true_obj.shape[0], obj.shape[0]))
    src_c = slice(max(o[1], 0), min(o[1] + true_obj.shape[1], obj.shape[1]))
    aligned[src_r.start - o[0] : src_r.stop - o[0], src_c.start - o[1] : src_c.stop - o[1]] = obj[src_r, src_c]
    ref, mov = true_obj[rows, cols], aligned[rows, cols]
    win = region[rows, cols]
    direct = _aligned(ref, mov, win)
    twin = _aligned(ref, mov[::-1, ::-1].conj(), win)
    is_twin = twin[-1] < direct[-1]
    fixed, inner, shift, ramp, crms = twin if is_twin else direct
    if not math.isfinite(crms):  # neither registration keeps enough overlap: compare as placed
        fixed, crms = _scaled(ref, mov, win)
        inner, shift, ramp, is_twin = win, np.zeros(2), np.zeros(2), False
    freq, curve = masked_frc(fixed, ref, inner)
    below = np.nonzero(curve < 0.5)[0]
    amp_r, amp_t = np.abs(fixed) * inner, np.abs(ref) * inner
    mse = float(((amp_r - amp_t)[inner] ** 2).mean())
    peak = float(amp_t[inner].max())
    out: dict[str, Any] = {
        "crms": crms,
        "apsnr_db": 10 * math.log10(peak**2 / max(mse, 1e-30)),
        "assim": ssim(np.where(inner, amp_r, amp_t.mean()), np.where(inner, amp_t, amp_t.mean())),
        "frc_cutoff": float(freq[below[0]]) if below.size else 0.5,
        "frc": {"freq": freq.tolist(), "value": curve.tolist()},
        "registration_shift": shift.tolist(),
        "phase_ramp": ramp.tolist(),
        "twin": bool(is_twin),
    }
    if positions is not None and "positions" in truth:
        err = positions - origin - truth["positions"]
        err -= err.mean(0)
        out["position_error_rms"] = float(np.sqrt((err**2).sum(1).mean()))
    return out
