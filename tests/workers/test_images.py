"""Result and preview images: windowed over the scanned region, phase referenced, colour and scale bars."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from workers import images, metrics

SIZE, PROBE = 160, 32


def probe() -> np.ndarray:
    r = np.hypot(*np.meshgrid(np.arange(PROBE) - PROBE / 2, np.arange(PROBE) - PROBE / 2))
    return (np.exp(-((r / 7.0) ** 2)) * np.exp(0.3j * r))[None].astype(np.complex64)


def positions() -> np.ndarray:
    grid = np.arange(40, SIZE - 40 - PROBE + 1, 6, dtype=np.float64)
    return np.stack(np.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2) + 0.3


def state(offset: float = 0.0) -> dict:
    """An object whose unscanned border is 1.0 and whose scanned part is about 0.02, with structure."""
    y, x = np.mgrid[:SIZE, :SIZE] / SIZE
    structure = np.sin(40 * x) * np.cos(25 * y)
    obj = np.ones((SIZE, SIZE), np.complex64)
    centre = slice(36, SIZE - 36)
    amp = 0.02 * (1 + 0.5 * structure)
    obj[centre, centre] = (amp * np.exp(0.4j * structure))[centre, centre]
    obj *= np.exp(1j * offset).astype(np.complex64)
    return {"object": obj, "probe": probe(), "positions": positions(), "attrs": {"pixel_size": 0.0}}


def decode(data: bytes) -> np.ndarray:
    assert data.startswith(b"\x89PNG")
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_illuminated_region_matches_the_metrics_one() -> None:
    s = state()
    ours = images.illuminated_region(s["probe"], s["positions"], (SIZE, SIZE))
    theirs = metrics.illuminated_region(s["probe"], s["positions"], (SIZE, SIZE))
    assert 0.1 < ours.mean() < 0.9
    assert (ours != theirs).mean() < 0.002


def test_scanned_region_uses_most_of_the_grey_range() -> None:
    s = state()
    region = images.illuminated_region(s["probe"], s["positions"], (SIZE, SIZE))
    rgb = decode(images.png("amplitude", np.abs(s["object"]), region, annotate=False)).astype(int)
    assert rgb.shape == (SIZE, SIZE, 3)
    grey = rgb[..., 0]
    lo, hi = np.percentile(grey[region], [1, 99])
    assert lo < 15 and hi > 240, (lo, hi)
    # the never-illuminated border (1.0) is dimmed, not white
    assert rgb[:5, :5].max() < 200 and rgb[:5, :5].min() > 60


def test_a_constant_phase_offset_renders_the_same() -> None:
    plain, shifted = state(), state(offset=2.9)
    for annotate in (False, True):
        a = decode(images.render_result(plain, "phase") if annotate else phase_png(plain))
        b = decode(images.render_result(shifted, "phase") if annotate else phase_png(shifted))
        assert a.shape == b.shape
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1


def phase_png(s: dict) -> bytes:
    region = images.illuminated_region(s["probe"], s["positions"], (SIZE, SIZE))
    return images.png("phase", np.angle(s["object"]), region, annotate=False)


def test_scale_bar_only_with_a_pixel_size() -> None:
    s = state()
    without = decode(images.render_result(s, "amplitude")).astype(int)
    s["attrs"]["pixel_size"] = 10e-9
    with_bar = decode(images.render_result(s, "amplitude")).astype(int)
    assert without.shape == with_bar.shape
    rows, cols = np.nonzero(np.abs(without - with_bar).sum(-1))
    h, w = without.shape[:2]
    assert len(rows) > 100 and rows.min() > h / 2 and cols.max() < w / 2  # only at the lower left
    assert images.scale_bar(10e-9, 500) == (100, "1 µm")
    assert images.scale_bar(4e-8, 537) == (50, "2 µm")
    assert images.scale_bar(3e-9, 300) == (33, "100 nm")


@pytest.mark.parametrize("kind", images.KINDS)
def test_annotated_pngs_decode_with_bars_beside_the_enlarged_image(kind: str) -> None:
    rgb = decode(images.render_result(state(), kind))
    side = PROBE if kind == "probe" else SIZE
    factor = -(-images.MIN_SIDE // side)
    assert rgb.shape[0] > side * factor and rgb.shape[1] > side * factor + 40
    bare = decode(images.png(kind, np.ones((7, 9)), annotate=False))
    assert bare.shape == (7, 9, 3)


def test_ticks_are_round_numbers_inside_the_window() -> None:
    assert [t for _, t in images.ticks(-0.78, 0.48)] == ["-0.6", "-0.4", "-0.2", "0.0", "0.2", "0.4"]
    assert [t for _, t in images.ticks(-np.pi, np.pi)] == ["-3", "-2", "-1", "0", "1", "2", "3"]
    assert [t for _, t in images.ticks(0.0151, 0.0249)] == ["0.016", "0.018", "0.020", "0.022", "0.024"]


def test_a_phase_spanning_the_circle_uses_the_cyclic_map() -> None:
    phase = np.linspace(-np.pi, np.pi, 400, endpoint=False).reshape(20, 20)
    assert images.window("phase", phase) == (-np.pi, np.pi, True)
    assert images.window("phase", 0.1 * phase)[2] is False
