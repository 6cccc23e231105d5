"""Dead-leaves training images: seeded, 8-bit, covering the canvas, the two variants distinct; leaves on smooth
fields keep their edges, with the field correlation length they claim."""

from __future__ import annotations

import numpy as np
import pytest

from models.fdsl import _inside, _smooth_noise, dataset, dead_leaves, on_field


def test_dataset_is_seeded_8_bit_and_half_textured() -> None:
    images = dataset(4, seed=3, size=64)
    assert images.shape == (4, 64, 64) and images.dtype == np.uint8
    assert np.array_equal(images, dataset(4, seed=3, size=64))
    assert not np.array_equal(images, dataset(4, seed=4, size=64))
    # DL-Diverse shapes are flat: few distinct grey levels; DL-Textured fills vary within each shape
    diverse, textured = images[:2], images[2:]
    assert all(len(np.unique(im)) < len(np.unique(tx)) for im, tx in zip(diverse, textured, strict=True))


def test_shapes_cover_the_canvas_at_many_sizes() -> None:
    image = dead_leaves(np.random.default_rng(0), size=128)
    values, counts = np.unique(image, return_counts=True)
    assert len(values) > 50  # many shapes, every pixel painted by one of them
    assert counts.max() > 200 and np.median(counts) < 100  # large shapes and small ones


def test_shape_masks() -> None:
    dy, dx = np.mgrid[-10:11, -10:11].astype(np.float32)
    dy, dx = dy.ravel()[None], dx.ravel()[None]
    one = np.ones(1, dtype=np.float32)
    circle = _inside(np.array([0]), 5 * one, 0 * one, one, dy, dx)
    square = _inside(np.array([1]), 5 * one, 0 * one, one, dy, dx)
    triangle = _inside(np.array([2]), 6 * one, 0 * one, one, dy, dx)
    assert circle.sum() == np.sum(dy**2 + dx**2 <= 25)
    assert square.sum() == 11 * 11
    assert abs(triangle.sum() / (3 * np.sqrt(3) / 4 * 36) - 1) < 0.2 and triangle[0, 10 * 21 + 10]  # inscribed in r = 6
    rotated = _inside(np.array([1]), 5 * one, np.float32(np.pi / 4) * one, one, dy, dx)
    assert rotated.sum() != square.sum() and rotated[0, 10 * 21 + 10]


def test_field_correlation_length_is_the_drawn_scale() -> None:
    # the autocorrelation of a field filtered by exp(-(pi s f)^2) is a Gaussian of standard deviation s px
    fields = _smooth_noise(np.random.default_rng(0), 64, 128, scales=(6.0, 6.0))
    spectrum = (np.abs(np.fft.fft2(fields)) ** 2).mean(axis=0)
    correlation = np.fft.ifft2(spectrum).real
    profile = correlation[0, :20] / correlation[0, 0]
    d = np.arange(20)
    assert np.allclose(profile, np.exp(-(d**2) / (2 * 6.0**2)), atol=0.03)


def test_leaves_on_fields_blend_a_smooth_field_and_keep_the_edges() -> None:
    plain = dataset(4, seed=3, size=64)
    blended = dataset(4, seed=3, size=64, recipe="leaves-on-fields")
    assert np.array_equal(plain, dataset(4, seed=3, size=64, recipe="leaves"))
    assert blended.dtype == np.uint8 and np.array_equal(blended, dataset(4, seed=3, size=64, recipe="leaves-on-fields"))
    # the blend is (1 - w) leaves + w field, w in [0.2, 0.8]
    rng = np.random.default_rng(11)
    leaves = dead_leaves(rng, 64)
    out = on_field(rng, leaves).astype(float)
    edges = np.abs(np.diff(leaves.astype(float), axis=1)) > 40  # shape borders
    ratio = np.abs(np.diff(out, axis=1))[edges].mean() / np.abs(np.diff(leaves.astype(float), axis=1))[edges].mean()
    assert 0.15 < ratio < 0.85  # the borders survive, scaled by 1 - w (plus the field's small slope)
    flat = ~(edges | np.roll(edges, 1, axis=1))
    assert len(np.unique(out[:, :-1][flat])) > len(np.unique(leaves[:, :-1][flat]))  # flat fills now vary smoothly


def test_unknown_recipe_is_refused() -> None:
    with pytest.raises(ValueError, match="recipe 'bogus'"):
        dataset(2, seed=0, size=32, recipe="bogus")
