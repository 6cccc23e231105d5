"""Frame sources of a run: a scan in memory (every frame at once) or a live stream (chunks, then its end)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np

from workers.data import Geometry, ScanData
from workers.errors import DataError, StoppedBeforeFrames
from workers.fluorescence import Fluorescence
from workers.job import StreamInput
from workers.record import RunRecord
from workers.stream.preprocess import build_preprocessor
from workers.stream.receiver import Receiver


class FrameSource(Protocol):
    """Where a run's frames come from: ``first`` frames (with the scan's geometry), then chunks until ``ended``."""

    live: bool

    def first(self, should_stop: Callable[[], bool]) -> ScanData: ...

    def more(self) -> tuple[np.ndarray, np.ndarray, Fluorescence | None] | None: ...

    def ended(self) -> bool: ...

    def attrs(self) -> dict[str, Any]: ...

    def final_attrs(self, run: RunRecord) -> dict[str, Any]: ...

    frames: Callable[[], tuple[ScanData, np.ndarray]] | None


class FileSource:
    """A scan in memory: every frame at once. ``frame_index`` (a resumed stream's frame numbers) makes
    checkpoints carry the frames, since no input file holds them."""

    live = False

    def __init__(self, data: ScanData, frame_index: np.ndarray | None = None) -> None:
        self.data = data
        self.frames = None if frame_index is None else (lambda: (data, frame_index))

    def first(self, should_stop: Callable[[], bool]) -> ScanData:
        return self.data

    def more(self) -> None:
        return None

    def ended(self) -> bool:
        return True

    def attrs(self) -> dict[str, Any]:
        return {"frames_received": self.data.n_frames, "input_file": self.data.source}

    def final_attrs(self, run: RunRecord) -> dict[str, Any]:
        return {}


def stream_receiver(spec: StreamInput) -> Receiver:
    """The receiver of a stream job (not started): its endpoints, idle timeout, preprocessing and limits."""
    return Receiver(
        spec.stream,
        positions=spec.positions,
        preprocess=build_preprocessor(spec.preprocess),
        limits=spec.limits,
        idle_timeout_s=spec.idle_timeout_s,
    )


class StreamSource:
    """A live scan from a started ``Receiver``: waits for ``warmup_frames``, then drains what has arrived.

    ``first`` raises ``StoppedBeforeFrames`` when asked to stop before any usable frame, and
    ``DataError`` (naming a refused start message, if any) when the stream ends without one.
    """

    live = True

    def __init__(self, receiver: Receiver, warmup_frames: int = 16) -> None:
        self.receiver, self.warmup_frames = receiver, warmup_frames
        self._seen: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._geometry: Geometry | None = None
        self._mask: np.ndarray | None = None
        self._elements: tuple[str, ...] | None = None

    def first(self, should_stop: Callable[[], bool]) -> ScanData:
        receiver, buffer = self.receiver, self.receiver.buffer
        while len(buffer) < self.warmup_frames and not receiver.done.is_set() and not should_stop():
            buffer.wait(0.05) if len(buffer) else receiver.done.wait(0.05)
        index, frames, corners = buffer.drain()
        scan = receiver.scan()
        if not len(index) or scan is None:
            if should_stop():
                raise StoppedBeforeFrames(f"stream {receiver.endpoint}: stopped before any usable frame arrived")
            c, refused = receiver.counters(), receiver.refused()
            why = f"start message refused: {refused}" if scan is None and refused else "ended without usable frames"
            raise DataError(f"stream {receiver.endpoint}: {why} (rejected {c['rejected']}, malformed {c['malformed']})")
        self._geometry, self._mask = scan.geometry, scan.mask
        self._seen.append((index, frames, corners))
        counts = self._fluorescence(index)
        return ScanData(frames, corners, scan.geometry, scan.mask, scan.probe, receiver.endpoint, fluorescence=counts)

    def more(self) -> tuple[np.ndarray, np.ndarray, Fluorescence | None] | None:
        index, frames, corners = self.receiver.buffer.drain()
        if not len(index):
            return None
        self._seen.append((index, frames, corners))
        return frames, corners, self._fluorescence(index)

    def _fluorescence(self, index: np.ndarray) -> Fluorescence | None:
        """The frames' fluorescence counts (elements as the first frame that carried them names them); None when
        no frame carried any. A frame without counts (or an element) among frames with them reads NaN, which
        the engine refuses naming the field."""
        rows = self.receiver.fluorescence(index)
        if all(r is None for r in rows):
            return None
        if self._elements is None:
            self._elements = tuple(next(r for r in rows if r is not None))
        nan = float("nan")
        counts = [[nan if r is None else r.get(e, nan) for r in rows] for e in self._elements]
        return Fluorescence(np.asarray(counts, dtype=np.float32), self._elements)

    def ended(self) -> bool:
        return self.receiver.done.is_set() and len(self.receiver.buffer) == 0

    def frames(self) -> tuple[ScanData, np.ndarray]:
        """Every frame received so far, in arrival order, and their frame numbers."""
        if len(self._seen) > 1:
            self._seen[:] = [tuple(np.concatenate(parts) for parts in zip(*self._seen, strict=True))]  # type: ignore[misc]
        order, intensities, positions = self._seen[0]
        if self._geometry is None:
            raise DataError(f"stream {self.receiver.endpoint}: no frames yet")
        return ScanData(intensities, positions, self._geometry, self._mask), order

    def attrs(self) -> dict[str, Any]:
        counters = self.receiver.counters()
        return {"input_stream": self.receiver.endpoint, "counters": json.dumps(counters)}

    def final_attrs(self, run: RunRecord) -> dict[str, Any]:
        accounting = stream_accounting(self.receiver.counters())
        return accounting | {"iterations_after_scan": run.scheduled_done, "frame_index": np.sort(self.frames()[1])}


def stream_accounting(counters: Mapping[str, Any]) -> dict[str, Any]:
    """The result attributes of a stream's frame accounting (``Counters.as_dict``)."""
    return {
        "frames_received": counters["received"],
        "frames_rejected": counters["frames_rejected"],
        "frames_rejected_by_reason": json.dumps(counters["rejected"]),
        "frames_missing": counters["missing"],
        "frames_duplicate": counters["duplicates"],
    }
