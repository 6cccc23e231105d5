"""Live previews: small, windowed over the scanned region like the result images."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from tests.workers.test_images import SIZE, state
from workers import images
from workers.previews import Preview, PreviewPublisher, _scanned
from workers.state import ReconState


def recon_state() -> ReconState:
    s = state(offset=1.0)
    return ReconState(
        object=torch.from_numpy(s["object"]),
        probe=torch.from_numpy(s["probe"]),
        positions=torch.from_numpy(s["positions"]),
        origin=np.zeros(2),
    )


def test_scanned_region_on_the_device_matches_the_numpy_one() -> None:
    s = state()
    expected = images.illuminated_region(s["probe"], s["positions"], (SIZE, SIZE))
    assert (_scanned(recon_state(), SIZE) != expected).mean() < 0.002
    small = _scanned(recon_state(), SIZE // 2)
    assert small.shape == (SIZE // 2, SIZE // 2) and 0.1 < small.mean() < 0.9


def test_previews_are_small_windowed_pngs() -> None:
    got: list[Preview] = []
    publisher = PreviewPublisher(got.append, size=SIZE // 2)
    assert publisher.offer(recon_state(), iteration=3, frames_used=10, loss=0.1, force=True)
    publisher.close()
    (preview,) = got
    assert preview.region.shape == preview.amplitude.shape == (SIZE // 2, SIZE // 2)
    for kind in images.KINDS:
        shape = preview.probe.shape if kind == "probe" else preview.amplitude.shape
        rgb = np.asarray(Image.open(io.BytesIO(preview.png[kind])).convert("RGB"))
        assert rgb.shape == (*shape, 3)
    grey = np.asarray(Image.open(io.BytesIO(preview.png["amplitude"])).convert("L"))[preview.region]
    lo, hi = np.percentile(grey, [1, 99])
    assert lo < 20 and hi > 235, (lo, hi)
