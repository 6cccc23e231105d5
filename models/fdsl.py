"""Formula-driven training data for the denoiser (seed 001, after Baradad et al. 2021): dead-leaves images.

DL-Diverse: rotated circles, triangles and rectangles of many sizes (radii drawn with density ~ r^-3, the
scale-invariant law of the dead-leaves model), each of one grey level, dropped until the canvas is covered;
a shape dropped later lies behind the ones already there. DL-Textured: the same shapes, each filled with a
texture (two sinusoidal gratings and a band of smooth noise around its grey level). 8-bit greyscale.
Vectorised over shapes and pixels: a batch of shapes is tested against every uncovered pixel at once.

Leaves on fields (not in the seed): each dead-leaves image blended with a smooth Gaussian random field
(Gaussian correlation of 3-24 px, weight 0.2-0.8), closer to ptychographic objects, whose phase and
absorption vary smoothly between sharp-edged features. Only a Gaussian filter and the shapes above: nothing
of the benchmark's object simulator (``workers.simulate.make_object``).
"""

from __future__ import annotations

import numpy as np

SIGMA = 15.0 / 255.0  # the seed's training noise, on images scaled to [0, 1]
SHAPES_PER_BATCH = 256
R_MIN, R_MAX = 2.0, 48.0  # radii in pixels at 128 x 128, scaled with the canvas
TEXTURE_SCALES = (1.0, 6.0)  # DL-Textured's smooth-noise correlation lengths, px (at any canvas)
FIELD_SCALES = (3.0, 24.0)  # the backdrop fields' correlation lengths, px at 128 x 128, scaled with the canvas
FIELD_WEIGHTS = (0.2, 0.8)  # the backdrop's share of each blended image
RECIPES = ("leaves", "leaves-on-fields")


def _radii(rng: np.random.Generator, n: int, r_min: float, r_max: float) -> np.ndarray:
    """n radii with density ~ r^-3 on [r_min, r_max] (inverse CDF)."""
    u = rng.uniform(size=n)
    return (r_min**-2 - u * (r_min**-2 - r_max**-2)) ** -0.5


def _inside(
    kind: np.ndarray, r: np.ndarray, theta: np.ndarray, aspect: np.ndarray, dy: np.ndarray, dx: np.ndarray
) -> np.ndarray:
    """(K, P) mask: pixel p (offset dy, dx from shape k's centre) lies in shape k: 0 circle, 1 rectangle, 2 triangle."""
    mask = np.empty(dy.shape, dtype=bool)
    for shape in range(3):
        k = np.flatnonzero(kind == shape)
        c, s = np.cos(theta[k])[:, None], np.sin(theta[k])[:, None]
        u, v = c * dx[k] + s * dy[k], -s * dx[k] + c * dy[k]  # rotated into the shape's frame
        rk, ak = r[k, None], aspect[k, None]
        if shape == 0:
            mask[k] = u**2 + v**2 <= rk**2
        elif shape == 1:
            mask[k] = (np.abs(u) <= rk * ak) & (np.abs(v) <= rk / ak)
        else:  # an equilateral triangle inscribed in radius r, stretched by the aspect along u: three half-planes
            u = u / ak
            mask[k] = (u >= -rk / 2) & (np.sqrt(3) * v + u <= rk) & (-np.sqrt(3) * v + u <= rk)
    return mask


def _smooth_noise(
    rng: np.random.Generator, n: int, size: int, scales: tuple[float, float] = TEXTURE_SCALES
) -> np.ndarray:
    """n Gaussian random fields, each in [-1, 1]: white noise through a Gaussian filter, so that the field's
    correlation is a Gaussian whose standard deviation (px) is drawn uniformly from ``scales``."""
    f = np.hypot(np.fft.fftfreq(size)[:, None], np.fft.fftfreq(size)[None, :])
    scale = rng.uniform(*scales, size=(n, 1, 1))
    fields = np.fft.ifft2(np.fft.fft2(rng.standard_normal((n, size, size))) * np.exp(-((np.pi * scale * f) ** 2))).real
    fields -= fields.mean(axis=(1, 2), keepdims=True)
    return fields / (np.abs(fields).max(axis=(1, 2), keepdims=True) + 1e-12)


def dead_leaves(rng: np.random.Generator, size: int = 128, textured: bool = False) -> np.ndarray:
    """One dead-leaves image (size, size) uint8: DL-Diverse, or DL-Textured with ``textured``."""
    scale = size / 128
    r_min, r_max = R_MIN * scale, R_MAX * scale
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    yy, xx = yy.ravel(), xx.ravel()
    image = np.zeros(size * size)
    free = np.ones(size * size, dtype=bool)
    bank = _smooth_noise(rng, 4, size).reshape(4, -1) if textured else None
    while free.any():
        k = SHAPES_PER_BATCH
        cy, cx = rng.uniform(-r_max / 2, size + r_max / 2, size=(2, k)).astype(np.float32)
        r = _radii(rng, k, r_min, r_max).astype(np.float32)
        theta, aspect = rng.uniform(0, 2 * np.pi, size=k), np.sqrt(rng.uniform(0.25, 1.0, size=k)).astype(np.float32)
        grey = rng.uniform(0, 1, size=k)
        idx = np.flatnonzero(free)
        mask = _inside(rng.integers(0, 3, size=k), r, theta, aspect, yy[idx] - cy[:, None], xx[idx] - cx[:, None])
        hit = mask.any(axis=0)
        first = mask.argmax(axis=0)[hit]  # the front-most shape of the batch at each newly covered pixel
        pixels = idx[hit]
        value = grey[first]
        if bank is not None:
            # per shape: two gratings of random period (3-24 px), direction and phase, and a band of smooth noise
            period = rng.uniform(3, 24, size=(2, k)) * scale
            direction, phase = rng.uniform(0, 2 * np.pi, size=(2, 2, k))
            amp = rng.uniform(0, 0.25, size=(3, k)) * (rng.uniform(size=(3, k)) < 0.7)
            which = rng.integers(0, len(bank), size=k)
            y, x = yy[pixels], xx[pixels]
            for j in range(2):
                arg = 2 * np.pi * (np.cos(direction[j][first]) * x + np.sin(direction[j][first]) * y)
                value = value + amp[j][first] * np.sin(arg / period[j][first] + phase[j][first])
            value = value + amp[2][first] * bank[which[first], pixels]
        image[pixels] = value
        free[pixels] = False
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8).reshape(size, size)


def on_field(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """``image`` (size, size) uint8 blended with a smooth random field scaled to [0, 1]: (1 - w) image + w field,
    w drawn from ``FIELD_WEIGHTS``, the field's correlation length from ``FIELD_SCALES`` (scaled with the size)."""
    size = image.shape[0]
    scales = (FIELD_SCALES[0] * size / 128, FIELD_SCALES[1] * size / 128)
    field = _smooth_noise(rng, 1, size, scales)[0]
    field = (field - field.min()) / (np.ptp(field) + 1e-12)
    w = rng.uniform(*FIELD_WEIGHTS)
    return np.round(((1 - w) * image / 255 + w * field) * 255).astype(np.uint8)


def check_recipe(recipe: str) -> None:
    """Refuse a training-data recipe that is not one of ``RECIPES``, in one line."""
    if recipe not in RECIPES:
        raise ValueError(f"unknown training-data recipe {recipe!r}: use one of {', '.join(RECIPES)}")


def dataset(n: int, seed: int, size: int = 128, recipe: str = "leaves") -> np.ndarray:
    """n images (n, size, size) uint8, the first half DL-Diverse, the rest DL-Textured, each blended with a
    smooth field where ``recipe`` is "leaves-on-fields"; the same for a seed."""
    check_recipe(recipe)
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        image = dead_leaves(rng, size, textured=i >= n // 2)
        images.append(on_field(rng, image) if recipe == "leaves-on-fields" else image)
    return np.stack(images)
