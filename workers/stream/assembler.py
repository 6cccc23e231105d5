"""Accounting of one scan: ``Assembler`` (the frame accounting, the position join, positions to pixels) feeding
``FrameBuffer`` (bounded, with backpressure); ``Scan`` and ``Counters`` are what the receiver reports.

Every frame index of a scan ends as received (in the buffer), rejected (with a reason) or
missing (never seen); duplicates are ignored and counted; malformed messages are counted and
logged, never fatal.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from workers import units
from workers.data import Geometry
from workers.stream.formats import decode
from workers.stream.preprocess import Preprocessor, Rejected
from workers.stream.protocol import (
    CorruptFrame,
    Frame,
    FrameBatch,
    Part,
    Position,
    Protocol,
    ProtocolError,
    ScanEnd,
    ScanStart,
    Translation,
)

log = logging.getLogger(__name__)


@dataclass
class Counters:
    """Frame accounting and rates, plain data for publishing (``as_dict``)."""

    received: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    missing: int = 0
    duplicates: int = 0
    malformed: dict[str, int] = field(default_factory=dict)
    positions: int = 0
    bytes: int = 0
    expected: int | None = None
    first_s: float | None = None
    last_s: float | None = None
    buffer_fill: int = 0
    buffer_capacity: int = 0
    waiting_peak: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The counters and their rates; the dicts are copies (safe to call while the receiver runs)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["rejected"], out["malformed"] = dict(self.rejected), dict(self.malformed)
        span = (self.last_s or 0.0) - (self.first_s or 0.0)
        out["frames_rejected"] = sum(out["rejected"].values())
        out["frames_per_s"] = self.received / span if span > 0 else 0.0
        out["bytes_per_s"] = self.bytes / span if span > 0 else 0.0
        return out


@dataclass(frozen=True)
class Scan:
    """A scan as its start message describes it, in the engines' terms: frames ``size`` x ``size`` (after
    preprocessing) in ``geometry``; ``mask`` (size, size) True on valid pixels or None; the probe guess or None."""

    scan_id: str
    protocol: Protocol
    size: int
    geometry: Geometry
    mask: np.ndarray | None
    probe: np.ndarray | None
    expected_frames: int | None


def scan_geometry(start: ScanStart, size: int, binning: int = 1) -> Geometry:
    """The geometry of frames cropped to ``size`` after ``binning`` x ``binning`` detector pixels."""
    wavelength = units.wavelength_from_energy_ev(start.energy_ev)
    pixel = units.sample_pixel(start.propagation, start.pixel_size_m * binning, wavelength, start.distance_m, size)
    return Geometry(start.propagation, wavelength, start.distance_m, pixel)


Item = tuple[int, np.ndarray, list[float]]  # frame index, preprocessed frame, probe-window corner (row, col) pixels


class FrameBuffer:
    """A bounded FIFO of preprocessed frames with their positions in pixels: ``put_many`` blocks while full
    (backpressure)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: deque[Item] = deque()
        self._cond = threading.Condition()

    def __len__(self) -> int:
        return len(self._items)

    def put_many(self, items: Sequence[Item], stop: threading.Event) -> int:
        """Append ``items`` in order, waiting while full; returns how many went in (all, unless ``stop`` is set)."""
        done = 0
        with self._cond:
            while done < len(items):
                room = min(self.capacity - len(self._items), len(items) - done)
                if room <= 0:
                    if stop.is_set():
                        break
                    self._cond.wait(0.05)
                    continue
                self._items.extend(items[done : done + room])
                done += room
                self._cond.notify_all()
        return done

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for a frame; True when one is there."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self._items) > 0, timeout)

    def drain(self, limit: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Take up to ``limit`` frames: indices (n,), frames (n, M, M), corners (n, 2) pixels.

        Frames keep the dtype they share (raw counts stay integers: half the bytes of float32 to
        copy here and to move to the engine's device, which converts them); mixed dtypes give float32.
        """
        with self._cond:
            n = len(self._items) if limit is None else min(limit, len(self._items))
            items = [self._items.popleft() for _ in range(n)]
            self._cond.notify_all()
        if not items:
            return np.zeros(0, np.int64), np.zeros((0, 0, 0), np.float32), np.zeros((0, 2))
        index, frames, corners = zip(*items, strict=True)
        dtypes = {f.dtype for f in frames}
        stacked = np.stack(frames) if len(dtypes) == 1 else np.stack(frames, dtype=np.float32, casting="unsafe")
        return np.asarray(index), stacked, np.asarray(corners, dtype=np.float64)


class Assembler:
    """Accounts frames of one scan, joins frames with positions by index, converts the positions to pixels
    and feeds the buffer."""

    def __init__(
        self, buffer: FrameBuffer, preprocess: Preprocessor, stop: threading.Event, protocol: Protocol | None = None
    ) -> None:
        self.buffer, self.preprocess, self.stop, self.protocol = buffer, preprocess, stop, protocol
        self.counters = Counters(buffer_capacity=buffer.capacity)
        self.start: ScanStart | None = None
        self.scan: Scan | None = None
        self.ended = False
        self._seen: set[int] = set()
        self._rejected: set[int] = set()
        self._frames: dict[int, np.ndarray] = {}
        self._positions: dict[int, Translation] = {}
        self._pending: list[tuple[int, np.ndarray, Translation]] = []

    def handle(self, parts: Sequence[Part]) -> None:
        """Decode one message and account for it; never raises on bad input. Usable frames reach the buffer
        at the next ``flush``."""
        now = time.perf_counter()
        try:
            msg = decode(parts)
        except CorruptFrame as exc:
            self._reject(exc.index, exc.reason, exc.scan_id)
            return
        except ProtocolError as exc:
            self.malformed(type(exc).__name__)
            if sum(self.counters.malformed.values()) <= 10:
                log.warning("malformed message ignored: %s", exc)
            return
        if isinstance(msg, Frame):
            self._arrived(msg.nbytes, now)
            self._frame(msg)
        elif isinstance(msg, FrameBatch):
            self._arrived(sum(f.nbytes for f in msg.frames), now)
            for exc in msg.corrupt:
                self._reject(exc.index, exc.reason, exc.scan_id)
            for frame in msg.frames:
                self._frame(frame)
        elif isinstance(msg, Position):
            self._position(msg)
        elif isinstance(msg, ScanStart):
            self._start(msg)
        elif isinstance(msg, ScanEnd) and self.start is not None and msg.scan_id == self.start.scan_id:
            self.ended = True
            if msg.frames_sent is not None:
                self.counters.expected = max(self.counters.expected or 0, msg.frames_sent)

    def malformed(self, kind: str) -> None:
        """Count a message that could not be used, by kind."""
        self.counters.malformed[kind] = self.counters.malformed.get(kind, 0) + 1

    def _arrived(self, nbytes: int, now: float) -> None:
        c = self.counters
        c.first_s = c.first_s or now
        c.last_s = now
        c.bytes += nbytes

    def _start(self, msg: ScanStart) -> None:
        problem = "second start" if self.start is not None else None
        if self.protocol is not None and msg.protocol != self.protocol:
            problem = f"{msg.protocol} start"
        if problem is not None:
            self.malformed(problem)
            return
        self.start = msg
        own = self.preprocess.valid
        if msg.valid is not None and (own is None or own.shape == msg.shape):
            valid = msg.valid if own is None else msg.valid & own
            self.preprocess = dataclasses.replace(self.preprocess, valid=valid)
        size = self.preprocess.output_size(msg.shape)
        mask = None
        try:
            mask = self.preprocess.mask(msg.shape)
        except Rejected as exc:  # the preprocessing does not fit this detector: every frame is rejected for it
            log.warning("scan %s: %s", msg.scan_id, exc)
        geometry = scan_geometry(msg, size, self.preprocess.binning)
        self.scan = Scan(msg.scan_id, msg.protocol, size, geometry, mask, msg.probe, msg.expected_frames)
        self.counters.expected = msg.expected_frames

    def _count(self, reason: str) -> None:
        self.counters.rejected[reason] = self.counters.rejected.get(reason, 0) + 1

    def _reject(self, index: int, reason: str, scan_id: str) -> None:
        """Account frame ``index`` as rejected; frames of no or another scan are counted apart."""
        if self.start is None:
            self._count("no start")
        elif scan_id != self.start.scan_id:
            self._count("scan id")
        elif index in self._seen or index in self._rejected or index in self._frames:
            self.counters.duplicates += 1
        else:
            self._count(reason)
            self._rejected.add(index)

    def _frame(self, msg: Frame) -> None:
        index = msg.index
        if self.start is None or msg.scan_id != self.start.scan_id:
            self._reject(index, "scan id", msg.scan_id)
            return
        if index in self._seen or index in self._rejected or index in self._frames:
            self.counters.duplicates += 1
            return
        expected = self.counters.expected
        if index < 0 or (expected is not None and index >= expected) or self.ended:
            self._reject(index, "index" if not self.ended else "after end", msg.scan_id)
            return
        if tuple(msg.data.shape) != self.start.shape:
            self._reject(index, "shape", msg.scan_id)
            return
        try:
            image = self.preprocess(msg.data)
        except Rejected as exc:
            self._reject(index, exc.reason, msg.scan_id)
            return
        position = msg.position_m if msg.position_m is not None else self._positions.pop(index, None)
        if position is None:
            self._frames[index] = image
            self.counters.waiting_peak = max(self.counters.waiting_peak, len(self._frames))
        else:
            self._deliver(index, image, position)

    def _position(self, msg: Position) -> None:
        self.counters.positions += 1
        if self.start is not None and msg.scan_id != self.start.scan_id:
            return
        if msg.index in self._frames:
            self._deliver(msg.index, self._frames.pop(msg.index), msg.position_m)
        elif msg.index not in self._seen:
            self._positions[msg.index] = msg.position_m

    def _deliver(self, index: int, image: np.ndarray, position_m: Translation) -> None:
        self._seen.add(index)
        self._pending.append((index, image, position_m))

    def flush(self) -> None:
        """Move the frames delivered since the last flush into the buffer (one lock and one position conversion
        for a burst of messages), waiting while it is full; frames it could not take (``stop`` set) are unseen
        again, so end up missing."""
        if not self._pending:
            return
        assert self.scan is not None  # frames are delivered only after the start
        pixel = self.scan.geometry.pixel_size
        translations = np.asarray([p for _, _, p in self._pending], dtype=np.float64)
        corners = units.corners_from_translations(translations, (pixel, pixel), self.scan.size).tolist()
        items = [(index, image, corner) for (index, image, _), corner in zip(self._pending, corners, strict=True)]
        stored = self.buffer.put_many(items, self.stop)
        self.counters.received += stored
        for index, _, _ in self._pending[stored:]:
            self._seen.discard(index)
        self._pending = []

    @property
    def waiting_for_positions(self) -> int:
        return len(self._frames)

    def finish(self) -> Counters:
        """Close the scan: frames still without a position are rejected, gaps become missing."""
        assert self.start is not None or not self._frames
        self.flush()
        for index in list(self._frames):
            self._frames.pop(index)
            self._reject(index, "no position", self.start.scan_id if self.start else "")
        accounted = self._seen | self._rejected
        top = self.counters.expected if self.counters.expected is not None else max(accounted, default=-1) + 1
        self.counters.missing = top - sum(1 for i in accounted if 0 <= i < top)
        self.counters.buffer_fill = len(self.buffer)
        return self.counters
