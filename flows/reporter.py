"""The reporter of a running job: the runtime's hooks (progress, ETA, previews, frame counts) into the job store.

Torch-free at import; the worker runtime is imported inside ``run``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

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

        result = run_job(
            spec,
            on_progress=self._on_progress,
            on_preview=self._on_preview,
            cancel=self.beat.cancel,
            on_listening=self._on_listening,
        )
        return {k: v for k, v in result.attrs.items() if isinstance(v, str | int | float | bool)}

    def _publish_frames(self, receiver: Receiver) -> None:
        counters, scan = receiver.counters(), receiver.scan()
        now, received = time.perf_counter(), int(counters["received"])
        t0, n0 = self._frames
        rate = (received - n0) / (now - t0) if now > t0 else 0.0
        self._frames = (now, received)
        values: dict[str, float | int | str] = {"frames_received": received, "frames_rate": round(rate, 2)}
        if scan is not None and scan.expected_frames:
            values["frames_expected"] = scan.expected_frames
        self.store.progress(self.job_id, values)

    def _on_listening(self, receiver: Receiver) -> None:
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
            "eta_s": round(remaining / self._rate, 1) if self._rate > 0 else -1,
        }
        self._report(lambda: self.store.progress(self.job_id, values, loss=p.loss))

    def _on_preview(self, preview: Preview) -> None:
        self._report(lambda: self.store.put_preview(self.job_id, preview.png, iteration=preview.iteration))
