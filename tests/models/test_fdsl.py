"""Dead-leaves training images: seeded, 8-bit, covering the canvas, the two variants distinct."""

from __future__ import annotations

import numpy as np

from models.fdsl import _inside, dataset, dead_leaves


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
