"""Live previews: small images of the object, element maps, every probe mode and the probe's far field, throttled,
PNG-encoded off the engine thread, each with what a viewer needs to draw its colour bar and scale bar.

They are windowed like result images (``workers.images``): over the scanned region, phase relative
to its median there, unscanned pixels dimmed. The PNGs are bare (one pixel per value); each channel's
``meta`` gives its display range, colour map and pixel size, so a viewer draws the bars at any size.
"""

from __future__ import annotations

import contextlib
import io
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from workers import images
from workers.images import colourise, relative_phase, threshold, window
from workers.state import ReconState

MAX_MODES = 8
"""Probe modes a preview copies and shows (the far-field intensity sums these)."""
MAX_POSITIONS = 20_000
"""Scan positions sent with a preview; longer scans send every k-th (always the newest)."""


@dataclass
class Preview:
    """One preview at most ``size`` px, float32 host copies.

    ``amplitude``/``phase`` (H, W) of the object block-averaged by ``scale``; ``probe`` (M, M) the first mode's
    amplitude; ``modes`` (MODE, M, M) complex, the probe modes; ``region`` (H, W) the scanned pixels;
    ``elements`` element symbol -> (H, W) areal density block-averaged like the object (a joint fluorescence run);
    ``positions`` (FRAME, 2) probe centres (row, col) in preview pixels, in the order frames were added;
    ``pixel_size`` metres per object pixel (0: unknown). ``png`` and ``meta`` (by channel name) are filled
    by the encoder.
    """

    iteration: int
    frames_used: int
    loss: float
    taken_s: float
    amplitude: np.ndarray
    phase: np.ndarray
    probe: np.ndarray
    region: np.ndarray
    modes: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), np.complex64))
    elements: dict[str, np.ndarray] = field(default_factory=dict)
    positions: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    scale: int = 1
    pixel_size: float = 0.0
    png: dict[str, bytes] = field(default_factory=dict)
    meta: dict[str, dict[str, Any]] = field(default_factory=dict)

    def channels(self) -> list[tuple[str, str, str, np.ndarray, np.ndarray | None, float]]:
        """(name, title, window kind, values, region, metres per pixel) of every image this preview shows; the
        window kinds are ``workers.images.window``'s, and ``farfield`` (log values, 1st percentile to maximum)."""
        obj_px = self.pixel_size * self.scale
        out = [
            ("amplitude", "object amplitude", "amplitude", self.amplitude, self.region, obj_px),
            ("phase", "object phase [rad]", "phase", self.phase, self.region, obj_px),
        ]
        for symbol, values in self.elements.items():
            name = "element_" + re.sub(r"[^a-z0-9]", "_", symbol.lower())
            out.append((name, images.title(f"elements/{symbol}"), "element", values, self.region, obj_px))
        out.append(("probe", "probe amplitude (mode 1)", "probe", self.probe, None, self.pixel_size))
        if len(self.modes) > 1:
            power = np.square(np.abs(self.modes)).sum(axis=(1, 2))
            share = power / max(float(power.sum()), 1e-30)
            out[-1] = ("probe", f"probe mode 1 ({100 * share[0]:.0f}% power)", *out[-1][2:])
            for k in range(1, min(len(self.modes), MAX_MODES)):
                title = f"probe mode {k + 1} ({100 * share[k]:.0f}% power)"
                out.append((f"probe_{k + 1}", title, "probe", np.abs(self.modes[k]), None, self.pixel_size))
        if len(self.modes):
            far = np.square(np.abs(np.fft.fftshift(np.fft.fft2(self.modes), axes=(-2, -1)))).sum(0)
            log_far = np.log10(far + 1e-6 * float(far.max()) + 1e-30).astype(np.float32)
            out.append(("probe_farfield", "probe far-field intensity [log10]", "farfield", log_far, None, 0.0))
        return out


def encode(preview: Preview) -> None:
    """Fill ``preview.png`` and ``preview.meta``: each channel windowed as ``workers.images`` windows it."""
    for name, heading, kind, values, region, pixel_size in preview.channels():
        if kind == "phase":
            values = relative_phase(values, region)
        if kind == "farfield":  # up to the maximum: the bright centre keeps its structure
            lo, hi, cyclic = float(np.percentile(values, 1.0)), float(values.max()), False
        else:
            lo, hi, cyclic = window(kind, values, region)
        out = io.BytesIO()
        Image.fromarray(colourise(values, lo, hi, cyclic, region)).save(out, format="PNG")
        preview.png[name] = out.getvalue()
        preview.meta[name] = {
            "name": name,
            "title": heading,
            "lo": lo,
            "hi": hi,
            "colormap": "cyclic" if cyclic else "grey",
            "width": int(values.shape[1]),
            "height": int(values.shape[0]),
            "pixel_size_m": pixel_size,
        }


def _small(image: torch.Tensor, size: int) -> torch.Tensor:
    """``image`` (H, W), complex or real, averaged over k x k blocks so that it is at most ``size`` px (k >= 1)."""
    k = _factor(image, size)
    if k <= 1:
        return image
    parts = torch.view_as_real(image).permute(2, 0, 1) if image.is_complex() else image[None]
    pooled = torch.nn.functional.avg_pool2d(parts[None], k, ceil_mode=True)[0]
    return torch.complex(pooled[0], pooled[1]) if image.is_complex() else pooled[0]


def _factor(image: torch.Tensor, size: int) -> int:
    """The block size ``_small`` averages ``image`` over."""
    return max(1, -(-max(image.shape[-2:]) // size))


def _scanned(state: ReconState, size: int) -> np.ndarray:
    """The scanned region at preview size, as a host boolean mask (see ``workers.images.illumination``).

    The probe intensity summed over the scan is one FFT convolution of the corner counts with the
    probe intensity on the state's device, block-averaged like the object, then thresholded.
    """
    h, w = state.object.shape
    m = state.probe.shape[-1]
    if len(state.positions) == 0 or h < m or w < m:
        return np.ones(tuple(_small(state.object.real, size).shape), bool)
    power = state.probe.abs().square().sum(0)
    corner = torch.floor(state.positions + 0.5).long()
    rows, cols = corner[:, 0].clamp(0, h - m), corner[:, 1].clamp(0, w - m)
    counts = torch.zeros((h, w), dtype=power.dtype, device=power.device)
    counts.index_put_((rows, cols), torch.ones_like(rows, dtype=power.dtype), accumulate=True)
    illum = torch.fft.irfft2(torch.fft.rfft2(counts) * torch.fft.rfft2(power, s=(h, w)), s=(h, w))
    return threshold(_small(illum, size).cpu().numpy())


def _centres(state: ReconState, scale: int) -> np.ndarray:
    """Probe-window centres (FRAME, 2) in preview pixels, at most ``MAX_POSITIONS`` of them (the newest kept)."""
    positions = state.positions
    n = len(positions)
    if n > MAX_POSITIONS:
        step = -(-n // MAX_POSITIONS)
        keep = torch.arange(n - 1, -1, -step, device=positions.device).flip(0)
        positions = positions[keep]
    centres = (positions + state.probe.shape[-1] / 2) / scale - 0.5
    return centres.cpu().numpy().astype(np.float32)


class PreviewPublisher:
    """``offer`` after each epoch: at most one preview per ``interval_s`` (or when forced).

    The engine thread only takes a block-averaged host copy (at most ``size`` px); a background
    thread encodes the PNGs and calls ``on_preview``. A forced preview is never dropped (it
    replaces the oldest waiting one). ``close`` publishes what is queued and joins the thread.
    ``pixel_size`` (metres per object pixel; 0 unknown) is set by the run once it knows the geometry.
    """

    def __init__(self, on_preview: Callable[[Preview], None], interval_s: float = 0.5, size: int = 256) -> None:
        self.on_preview, self.interval_s, self.size = on_preview, interval_s, size
        self.pixel_size = 0.0
        self._last = -float("inf")
        self._queue: queue.Queue[Preview | None] = queue.Queue(maxsize=2)
        self._thread = threading.Thread(target=self._encode, name="previews", daemon=True)
        self._thread.start()

    def offer(self, state: ReconState, iteration: int, frames_used: int, loss: float, *, force: bool = False) -> bool:
        now = time.perf_counter()
        if not force and (now - self._last < self.interval_s or self._queue.full()):
            return False
        self._last = now
        obj = _small(state.object, self.size)
        scale = _factor(state.object, self.size)
        modes = state.probe[:MAX_MODES]
        preview = Preview(
            iteration,
            frames_used,
            loss,
            time.time(),
            obj.abs().cpu().numpy().astype(np.float32),
            obj.angle().cpu().numpy().astype(np.float32),
            _small(state.probe[0].abs(), self.size).cpu().numpy().astype(np.float32),
            _scanned(state, self.size),
            modes.detach().cpu().numpy().astype(np.complex64),
            {k: _small(v, self.size).cpu().numpy().astype(np.float32) for k, v in state.elements.items()},
            _centres(state, scale),
            scale,
            self.pixel_size,
        )
        try:
            self._queue.put_nowait(preview)
        except queue.Full:
            if not force:
                return False
            with contextlib.suppress(queue.Empty):
                self._queue.get_nowait()
            self._queue.put(preview)
        return True

    def _encode(self) -> None:
        while (preview := self._queue.get()) is not None:
            encode(preview)
            self.on_preview(preview)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
