"""Live previews: small amplitude, phase and probe images, throttled, PNG-encoded off the engine thread.

They are windowed like result images (``workers.images``): over the scanned region, phase relative
to its median there, unscanned pixels dimmed; no colour or scale bar.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from workers.images import KINDS, png, threshold
from workers.state import ReconState


@dataclass
class Preview:
    """One preview: ``amplitude``/``phase`` of the object and ``probe`` amplitude, at most ``size`` px, float32;
    ``region`` (same shape as the object's images): the scanned pixels."""

    iteration: int
    frames_used: int
    loss: float
    taken_s: float
    amplitude: np.ndarray
    phase: np.ndarray
    probe: np.ndarray
    region: np.ndarray
    png: dict[str, bytes] = field(default_factory=dict)


def _small(image: torch.Tensor, size: int) -> torch.Tensor:
    """``image`` (H, W), complex or real, averaged over k x k blocks so that it is at most ``size`` px (k >= 1)."""
    k = -(-max(image.shape[-2:]) // size)
    if k <= 1:
        return image
    parts = torch.view_as_real(image).permute(2, 0, 1) if image.is_complex() else image[None]
    pooled = torch.nn.functional.avg_pool2d(parts[None], k, ceil_mode=True)[0]
    return torch.complex(pooled[0], pooled[1]) if image.is_complex() else pooled[0]


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


class PreviewPublisher:
    """``offer`` after each epoch: at most one preview per ``interval_s`` (or when forced).

    The engine thread only takes a block-averaged host copy (at most ``size`` px); a background
    thread encodes the PNGs and calls ``on_preview``. A forced preview is never dropped (it
    replaces the oldest waiting one). ``close`` publishes what is queued and joins the thread.
    """

    def __init__(self, on_preview: Callable[[Preview], None], interval_s: float = 0.5, size: int = 256) -> None:
        self.on_preview, self.interval_s, self.size = on_preview, interval_s, size
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
        probe = _small(state.probe[0].abs(), self.size)
        preview = Preview(
            iteration,
            frames_used,
            loss,
            time.time(),
            obj.abs().cpu().numpy().astype(np.float32),
            obj.angle().cpu().numpy().astype(np.float32),
            probe.cpu().numpy().astype(np.float32),
            _scanned(state, self.size),
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
            preview.png = {
                k: png(k, getattr(preview, k), None if k == "probe" else preview.region, annotate=False) for k in KINDS
            }
            self.on_preview(preview)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
