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


def test_previews_describe_each_channel_for_its_bars() -> None:
    s = recon_state()
    s.probe = torch.cat([s.probe, 0.3 * s.probe.roll(3, -1)])
    got: list[Preview] = []
    publisher = PreviewPublisher(got.append, size=SIZE // 2)
    publisher.pixel_size = 20e-9
    publisher.offer(s, iteration=1, frames_used=len(s.positions), loss=0.1, force=True)
    publisher.close()
    (preview,) = got
    assert list(preview.meta) == list(preview.png) == ["amplitude", "phase", "probe", "probe_2", "probe_farfield"]
    amplitude = preview.meta["amplitude"]
    assert amplitude["pixel_size_m"] == 40e-9 and preview.meta["probe"]["pixel_size_m"] == 20e-9
    inside = preview.amplitude[preview.region]
    assert amplitude["lo"] < np.percentile(inside, 50) < amplitude["hi"] < 0.05  # the scanned part, not the border
    assert preview.meta["probe"]["title"] == "probe mode 1 (92% power)"
    assert preview.meta["probe_2"]["title"] == "probe mode 2 (8% power)"
    far = preview.meta["probe_farfield"]
    assert far["pixel_size_m"] == 0 and far["width"] == far["height"] == s.probe.shape[-1]
    for name, meta in preview.meta.items():
        assert Image.open(io.BytesIO(preview.png[name])).size == (meta["width"], meta["height"]), name
    centres = s.positions.numpy() + s.probe.shape[-1] / 2
    assert np.allclose(preview.positions, centres / 2 - 0.5, atol=1e-4)


def test_element_maps_are_channels_beside_the_object() -> None:
    s = recon_state()
    s.elements = {"Fe": torch.from_numpy(np.abs(s.object.numpy()) * 1e-6), "Zn": torch.zeros(s.object.shape)}
    got: list[Preview] = []
    publisher = PreviewPublisher(got.append, size=SIZE // 2)
    publisher.offer(s, iteration=1, frames_used=len(s.positions), loss=0.1, force=True)
    publisher.close()
    (preview,) = got
    assert list(preview.meta)[:5] == ["amplitude", "phase", "element_fe", "element_zn", "probe"]
    fe = preview.meta["element_fe"]
    assert fe["title"] == "Fe areal density [g/cm^2]" and (fe["width"], fe["height"]) == (SIZE // 2, SIZE // 2)
    assert fe["lo"] < np.median(preview.elements["Fe"][preview.region]) < fe["hi"] < 1e-6
