"""The reporter of a running job: the runtime's hooks (progress, ETA, previews, frame accounting) into the job store.

Torch-free at import; the worker runtime is imported inside ``run``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import redis

from flows.heartbeat import Heartbeat
from workers.job import JobSpec

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from workers.previews import Preview
    from workers.runtime import Progress
    from workers.stream.receiver import Receiver


class JobReporter:
    """Reports one claimed job into the store through the runtime's hooks; stopped by its heartbeat's ``cancel``.

    Reports are best effort: while the store is unreachable they are dropped (counted, logged once per outage)
    and the reconstruction goes on; the result file keeps the whole history."""

    def __init__(self, beat: Heartbeat) -> None:
        self.beat, self.store, self.job_id = beat, beat.store, beat.job_id
        self._started = time.perf_counter()
        self._last: tuple[float, int] | None = None
        self._rate = 0.0
        self._frames: tuple[float, int] = (self._started, 0)
        self._frame_rate = 0.0
        self._expected: int | None = None
        self._scan_left_s: float | None = None
        self._accounting: dict[str, Any] | None = None
        self._receiver: Receiver | None = None
        self.dropped = 0

    def _report(self, call: Callable[[], None]) -> None:
        """Send one report to the store; drop it (counted) if the store is unreachable."""
        try:
            call()
        except redis.RedisError as exc:
            if self.dropped == 0:
                log.warning("job %s: the store is unreachable (%s); dropping progress reports", self.job_id, exc)
            self.dropped += 1
            return
        if self.dropped:
            log.warning("job %s: the store is back; %d progress reports were dropped", self.job_id, self.dropped)
            self.dropped = 0

    def run(self, spec: JobSpec) -> dict[str, Any]:
        """Run ``spec`` to its result file; returns the result's attributes (``stopped`` when cancelled)."""
        from workers.runtime import run_job

        try:
            result = run_job(
                spec,
                on_progress=self._on_progress,
                on_preview=self._on_preview,
                cancel=self.beat.cancel,
                on_listening=self._on_listening,
            )
        finally:  # the final accounting (the scan may end between two heartbeats)
            if (receiver := self._receiver) is not None:
                self._report(lambda: self._publish_frames(receiver))
        return {k: v for k, v in result.attrs.items() if isinstance(v, str | int | float | bool)}

    def _publish_frames(self, receiver: Receiver) -> None:
        """Every heartbeat: frames received, their rate and what is left of the scan; the accounting with
        reasons and the frame map (stored only when it changed)."""
        counters, scan = receiver.counters(), receiver.scan()
        now, received = time.perf_counter(), int(counters["received"])
        t0, n0 = self._frames
        rate = (received - n0) / (now - t0) if now > t0 else 0.0
        self._frames = (now, received)
        self._frame_rate = rate if self._frame_rate == 0 else 0.7 * self._frame_rate + 0.3 * rate
        values: dict[str, float | int | str] = {"frames_received": received, "frames_rate": round(rate, 2)}
        expected = counters["expected"] or (scan.expected_frames if scan is not None else None)
        if expected:
            values["frames_expected"] = self._expected = int(expected)
        ended = receiver.done.is_set()
        self._scan_left_s = 0.0 if ended else self._scan_time_left(received)
        values["eta_scan_s"] = -1 if self._scan_left_s is None else round(self._scan_left_s, 1)
        self.store.progress(self.job_id, values)
        accounting = frame_accounting(counters, *receiver.indices(), ended=ended)
        if accounting != self._accounting:
            self._accounting = accounting
            self.store.put_view(self.job_id, "frames", accounting)

    def _scan_time_left(self, received: int) -> float | None:
        """Seconds until the last expected frame at the current frame rate; None while either is unknown."""
        if self._expected is None or self._frame_rate <= 0:
            return None
        return max(self._expected - received, 0) / self._frame_rate

    def _on_listening(self, receiver: Receiver) -> None:
        self._receiver = receiver
        self.beat.listen(lambda: self._publish_frames(receiver))
        self._report(lambda: self.store.progress(self.job_id, {"listening": receiver.endpoint}))
        self._report(lambda: self.store.log(self.job_id, f"listening on {receiver.endpoint}"))

    def _on_progress(self, p: Progress) -> None:
        now = time.perf_counter()
        if self._last is not None and p.iteration > self._last[1]:
            instant = (p.iteration - self._last[1]) / max(now - self._last[0], 1e-9)
            self._rate = instant if self._rate == 0 else 0.8 * self._rate + 0.2 * instant
        self._last = (now, p.iteration)
        remaining = max(p.total_iterations - p.iteration, 0)
        eta = self._eta(p, remaining)
        values: dict[str, float | int | str] = {
            "iteration": p.iteration,
            "total_iterations": p.total_iterations,
            "stage": p.stage,
            "engine": p.engine,
            "loss": p.loss,
            "elapsed_s": round(p.elapsed_s, 3),
            "frames_used": p.frames_used,
            "streaming": int(p.streaming),
            "iteration_rate": round(self._rate, 3),
            "eta_s": -1 if eta is None else round(eta, 1),
        }
        self._report(lambda: self.store.progress(self.job_id, values, loss=p.loss))

    def _eta(self, p: Progress, remaining: int) -> float | None:
        """Seconds to the end of the schedule. After the scan: the epochs left at the iteration rate. While
        streaming: the scan time left, then the epochs after it, each slower than now by the frames still to
        come (an epoch's time grows with its frames). None while unknown."""
        if self._rate <= 0:
            return None
        if not p.streaming:
            return remaining / self._rate
        if self._scan_left_s is None or self._expected is None or p.frames_used <= 0:
            return None
        return self._scan_left_s + remaining / self._rate * max(self._expected / p.frames_used, 1.0)

    def _on_preview(self, preview: Preview) -> None:
        channels = [preview.meta[name] for name in preview.png]
        self._report(
            lambda: self.store.put_preview(self.job_id, preview.png, iteration=preview.iteration, channels=channels)
        )
        self._report(lambda: self.store.put_view(self.job_id, "positions", scan_positions(preview)))


def scan_positions(preview: Preview) -> dict[str, Any]:
    """The scan map of a preview: probe centres as a flat [row, col, ...] list in the preview's pixels (its
    amplitude image), the newest last, with the image size and metres per pixel (0: unknown)."""
    return {
        "iteration": preview.iteration,
        "frames_used": preview.frames_used,
        "width": int(preview.amplitude.shape[1]),
        "height": int(preview.amplitude.shape[0]),
        "pixel_size_m": preview.pixel_size * preview.scale,
        "points": [round(float(v), 1) for v in preview.positions.reshape(-1)],
    }


MAX_CELLS = 4096
"""The frame map of a stream has at most this many cells (a longer scan puts several frames in a cell)."""
RECEIVED, MISSING, REJECTED = 1, 2, 3
CELL_CODES = ".rmx"  # not yet, received, missing, rejected: a cell shows the worst of its frames


def frame_accounting(
    counters: Mapping[str, Any], received: frozenset[int], rejected: frozenset[int], *, ended: bool
) -> dict[str, Any]:
    """A stream's frame accounting for the dashboard: counts (rejected and malformed by reason, missing,
    duplicates) and the frame map ``cells`` (one character per ``per_cell`` frame indices, ``CELL_CODES``).

    Missing: indices below the newest frame seen that have not arrived (the receiver's own count once the scan
    has ended, when every unaccounted index is missing)."""
    expected = counters["expected"]
    newest = max(max(received, default=-1), max(rejected, default=-1))
    top = int(expected) if expected else newest + 1
    status = np.zeros(top, np.int8)
    status[: top if ended else newest + 1] = MISSING
    status[[i for i in received if i < top]] = RECEIVED
    status[[i for i in rejected if i < top]] = REJECTED
    per_cell = max(1, -(-top // MAX_CELLS))
    padded = np.zeros(-(-top // per_cell) * per_cell, np.int8)
    padded[:top] = status
    cells = padded.reshape(-1, per_cell).max(axis=1) if top else padded
    return {
        "received": int(counters["received"]),
        "expected": expected,
        "rejected": dict(counters["rejected"]),
        "malformed": dict(counters["malformed"]),
        "duplicates": int(counters["duplicates"]),
        "missing": int(counters["missing"]) if ended else int(np.count_nonzero(status == MISSING)),
        "ended": ended,
        "newest": newest if newest >= 0 else None,
        "per_cell": per_cell,
        "cells": "".join(CELL_CODES[c] for c in cells),
    }
