"""Synthetic scans with known truth: objects, probes, scan patterns, noise.

Far-field defaults: 12.4 keV (lambda = 1e-10 m), detector 2 m away, 75 um pixels; near field:
a parallel beam, 0.5 um sample-plane pixels, 5 cm propagation. The simulated scan's frame of
reference is the truth object's array, so ``truth["positions"]`` index ``truth["object"]``.

With ``xrf`` elements, element maps (areal densities, g/cm^2) at the object's resolution make the
object's absorption through a link (``workers.xrf_model``), and fluorescence counts
s_e sum_r |P(r - x_j)|^2 w_e(r) (self-absorption neglected) are recorded per frame, with Poisson
noise when ``photons`` is finite; the maps are kept as truth ``elements/<symbol>``.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch

from workers import layout, physics, xrf_model
from workers.data import Geometry, ScanData
from workers.fluorescence import Fluorescence, default_sensitivity, energy_kev, mass_attenuation
from workers.probe_start import beam_diameter, defocused

WAVELENGTH = 1e-10
FAR_DISTANCE, DETECTOR_PIXEL = 2.0, 75e-6
NEAR_DISTANCE, NEAR_PIXEL = 0.05, 5e-7

ScanKind = Literal["raster", "fermat", "random"]
ProbeKind = Literal["focused", "structured", "near", "airy", "zone-plate-25", "zone-plate-50", "kb"]
ZONE_PLATE = {"zone-plate-25": 0.25, "zone-plate-50": 0.5}  # beam width, fraction of the frame


def _smooth(rng: np.random.Generator, shape: tuple[int, int], scale: float) -> np.ndarray:
    """Gaussian-filtered white noise with correlation length ``scale`` pixels, normalised to [0, 1]."""
    noise = np.fft.fft2(rng.standard_normal(shape))
    fy, fx = np.fft.fftfreq(shape[0])[:, None], np.fft.fftfreq(shape[1])[None, :]
    field = np.fft.ifft2(noise * np.exp(-2 * (math.pi * scale) ** 2 * (fy**2 + fx**2))).real
    return (field - field.min()) / (np.ptp(field) + 1e-12)


def make_object(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Complex test object (H, W): sharp discs and bars plus smooth texture in amplitude and phase.

    Amplitude in [0.5, 1], phase in [-1, 1] rad; amplitude and phase are independent.
    """
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    sharp_a, sharp_p = np.zeros(shape), np.zeros(shape)
    for target in (sharp_a, sharp_p):
        for _ in range(max(8, h * w // 600)):
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(3, max(4.0, min(h, w) / 10))
            if rng.uniform() < 0.5:
                shape_mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
            else:
                shape_mask = (abs(yy - cy) < r) & (abs(xx - cx) < r / 3)
            target[shape_mask] = rng.uniform(0, 1)
    amplitude = 0.5 + 0.5 * (0.6 * sharp_a + 0.4 * _smooth(rng, shape, 6.0))
    phase = 2.0 * (0.6 * sharp_p + 0.4 * _smooth(rng, shape, 10.0)) - 1.0
    return (amplitude * np.exp(1j * phase)).astype(np.complex64)


def make_element_maps(shape: tuple[int, int], n_elements: int, rng: np.random.Generator) -> np.ndarray:
    """Element patterns (ELEMENT, H, W) in [0, 1]: sharp discs, bars and 1-3 px dots (finer than a
    focused beam) over a weak smooth background; each element has its own pattern."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    maps = np.zeros((n_elements, h, w))
    for m in maps:
        for _ in range(max(6, h * w // 900)):
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(3, max(4.0, min(h, w) / 12))
            if rng.uniform() < 0.5:
                inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
            else:
                inside = (abs(yy - cy) < r) & (abs(xx - cx) < r / 3)
            m[inside] = rng.uniform(0.3, 1.0)
        for _ in range(max(4, h * w // 1500)):
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(0.7, 1.6)
            m[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = 1.0
        m += 0.15 * _smooth(rng, shape, 8.0)
    return maps / maps.max(axis=(1, 2), keepdims=True)


def make_probe(size: int, kind: ProbeKind, rng: np.random.Generator, geometry: Geometry) -> np.ndarray:
    """Probe (M, M) complex64 with unit total power, centred in its window.

    Far-field probes are built in the pupil (detector) plane, f in cycles/pixel, defocus
    exp(i pi (c_y f_y^2 + c_x f_x^2)), which spreads a pupil of radius f_p over 2 c f_p pixels:
    focused: a disc pupil a little off focus; airy: a disc pupil (radius 0.25) in focus;
    zone-plate-25 / -50: a high-NA annular pupil (radius 0.45, nearly filling the detector;
    central stop half of it) defocused so that the ring-shaped beam spans 25% / 50% of the frame,
    with 5% astigmatism; kb: a rectangular pupil (Kirkpatrick-Baez mirrors, 0.8 x 0.7 of the
    detector) with a different defocus per axis (beam 30% x 45% of the frame); structured: a
    soft-edged disc (diameter ~0.34 M) with a random phase of ~1.5 px correlation (a phase mask or
    diffuser near the sample); near: a wide beam with a smooth random phase (a diffuser), for
    near-field ptychography.
    """
    f = np.fft.fftfreq(size)
    fy, fx = f[:, None], f[None, :]
    r2 = fy**2 + fx**2
    yy, xx = (np.mgrid[:size, :size] - size / 2 + 0.5) / size
    if kind in ZONE_PLATE:
        outer = 0.45
        pupil = ((r2 < outer**2) & (r2 > (0.5 * outer) ** 2)).astype(float)
        c = ZONE_PLATE[kind] * size / (2 * outer)
        probe = defocused(pupil, 1.05 * c, 0.95 * c)
    elif kind == "kb":
        ay, ax = 0.4, 0.35
        pupil = ((abs(fy) < ay) & (abs(fx) < ax)).astype(float)
        probe = defocused(pupil, 0.3 * size / (2 * ay), 0.45 * size / (2 * ax))
    elif kind == "airy":
        probe = defocused((r2 < 0.25**2).astype(float), 0.0, 0.0)
    elif kind == "near":
        envelope = np.exp(-(((yy**2 + xx**2) / (2 * 0.22**2)) ** 2))
        probe = envelope * np.exp(1j * 4 * math.pi * _smooth(rng, (size, size), size / 16))
    elif kind == "structured":
        envelope = 1 / (1 + np.exp((np.sqrt(yy**2 + xx**2) - 0.17) * size))
        probe = envelope * np.exp(2j * math.pi * _smooth(rng, (size, size), 1.5))
    else:
        probe = defocused((r2 < 0.12**2).astype(float), 1.2 * size, 1.2 * size)
    probe /= np.sqrt((np.abs(probe) ** 2).sum())
    return probe.astype(np.complex64)


def make_scan(n: int, step: float, kind: ScanKind, rng: np.random.Generator) -> np.ndarray:
    """Centre positions (N, 2) around 0 with nearest-neighbour spacing about ``step`` pixels."""
    if kind == "raster":
        side = math.ceil(math.sqrt(n))
        grid = np.stack(np.meshgrid(np.arange(side), np.arange(side), indexing="ij"), -1).reshape(-1, 2)[:n]
        pos = grid * step
    elif kind == "fermat":
        k = np.arange(n)
        radius, theta = step / 1.9 * np.sqrt(k), k * math.radians(137.508)
        pos = np.stack([radius * np.sin(theta), radius * np.cos(theta)], 1)
    else:
        pos = rng.uniform(0, step * math.sqrt(n), size=(n, 2))
    return pos - pos.mean(0)


def far_field_geometry(size: int) -> Geometry:
    """Far-field geometry with the module's defaults, for frames of ``size`` pixels."""
    return Geometry("far", WAVELENGTH, FAR_DISTANCE, WAVELENGTH * FAR_DISTANCE / (size * DETECTOR_PIXEL))


def simulate(
    *,
    probe_size: int = 128,
    n_positions: int = 400,
    overlap: float = 0.7,
    photons: float = 1e6,
    near_field: bool = False,
    probe_kind: ProbeKind | None = None,
    scan: ScanKind = "fermat",
    position_error: float = 0.0,
    seed: int = 0,
    xrf: tuple[str, ...] = (),
    link: xrf_model.Link = "physical",
    absorption: float = 0.5,
) -> ScanData:
    """Simulate a scan: Poisson noise at ``photons`` per frame (``inf`` for none).

    ``xrf``: element symbols whose maps make the object's absorption (peak sum_e mu_e w_e =
    ``absorption``) through ``link`` (``physical``: |O| = exp(-1/2 sum mu w); ``linear``: the seed's
    weak-object form O = 1 - 1/2 sum mu w + i phase), the phase from the test object.

    ``overlap`` is 1 - step / beam diameter; ``position_error`` (pixels, RMS per axis) perturbs
    the recorded positions, while the truth keeps the exact ones. Returns data whose
    ``truth`` holds ``object``, ``probe`` (1, M, M) and exact ``positions`` (N, 2).
    """
    if not 0 <= overlap < 1:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    rng = np.random.default_rng(seed)
    m = probe_size
    geometry = Geometry("near", WAVELENGTH, NEAR_DISTANCE, NEAR_PIXEL) if near_field else far_field_geometry(m)
    probe = make_probe(m, probe_kind or ("near" if near_field else "focused"), rng, geometry)
    probe *= math.sqrt(photons if math.isfinite(photons) else 1e6)
    step = (1 - overlap) * beam_diameter(probe)
    centres = make_scan(n_positions, step, scan, rng)
    margin = 4
    corners = centres - centres.min(0) + margin
    size = np.ceil(corners.max(0) + m + margin).astype(int)
    obj = make_object((int(size[0]), int(size[1])), rng)
    truth_maps: dict[str, np.ndarray] = {}
    fluorescence = None
    if xrf:
        mu = mass_attenuation(xrf, energy_kev(geometry.wavelength))
        maps = make_element_maps(obj.shape, len(xrf), rng) * (absorption / len(xrf) / mu)[:, None, None]
        u = torch.from_numpy(maps * mu[:, None, None]).float()
        base = torch.from_numpy(np.angle(obj))
        obj = xrf_model.linked_object(link, base.float(), u).numpy().astype(np.complex64)
        truth_maps = {f"elements/{e}": m.astype(np.float32) for e, m in zip(xrf, maps, strict=True)}

    prop = physics.propagator(geometry, m, "cpu")
    corner, frac = physics.split_positions(torch.from_numpy(corners))
    patches = physics.patches(torch.from_numpy(obj), corner, frac, m, physics.SUBPIXEL_PAD)
    far = prop.forward(physics.exit_waves(torch.from_numpy(probe)[None], patches))
    clean = layout.to_detector(physics.intensity(far).numpy().astype(np.float64), geometry.kind)
    frames = rng.poisson(clean).astype(np.float32) if math.isfinite(photons) else clean.astype(np.float32)
    if xrf:
        sensitivity = default_sensitivity(xrf, energy_kev(geometry.wavelength))
        scale = torch.from_numpy(sensitivity / mu).float()
        illum = xrf_model.illumination(torch.from_numpy(probe)[None])
        expected = xrf_model.expected_counts(illum, u, corner, frac, scale).double().numpy()
        counts = rng.poisson(expected) if math.isfinite(photons) else expected
        fluorescence = Fluorescence(counts.astype(np.float32), xrf)
    recorded = corners + rng.normal(0, position_error, corners.shape) if position_error else corners
    truth = {"object": obj, "probe": probe[None], "positions": corners} | truth_maps
    return ScanData(frames, recorded, geometry, None, None, "<simulation>", truth, fluorescence)
