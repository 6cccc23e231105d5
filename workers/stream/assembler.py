"""Accounting of one scan: ``Assembler`` (the frame accounting, the position join, positions to pixels) feeding
``FrameBuffer`` (bounded, with backpressure); ``Scan`` and ``Counters`` are what the receiver reports.

Every frame index of a scan ends as received (in the buffer), rejected (with a reason) or
missing (never seen); duplicates are ignored and counted; malformed messages are counted and
logged, never fatal. Everything held is bounded by ``StreamLimits``: indices by the scan's
declared frame count (else ``max_frames``), frames waiting for positions by ``waiting_frames``,
positions waiting for frames by ``waiting_positions``, decoded frames by ``max_frame_bytes``
(checked before they are inflated).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from workers import units
from workers.data import Geometry
from workers.job import StreamLimits
from workers.stream.formats import decode
from workers.stream.preprocess import Preprocessor, Rejected
from workers.stream.protocol import (
    CorruptFrame,
    Expect,
    Frame,
    FrameBatch,
    InvalidStart,
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
    """The geometry of frames cropped to ``size`` after ``binning`` x ``binning`` detector pixels; ``InvalidStart``
    where the start's numbers, each valid, give no usable sample pixel (e.g. an overflow)."""
    wavelength = units.wavelength_from_energy_ev(start.energy_ev)
    pixel = units.sample_pixel(start.propagation, start.pixel_size_m * binning, wavelength, start.distance_m, size)
    if not (math.isfinite(wavelength) and math.isfinite(pixel) and wavelength > 0 and pixel > 0):
        raise InvalidStart(
            start.scan_id, f"{start.protocol} start: gives a sample pixel of {pixel} m and wavelength {wavelength} m"
        )
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

    def discard(self) -> int:
        """Drop every buffered frame (a consumer that only counts, as ``listen``); returns how many."""
        with self._cond:
            n = len(self._items)
            self._items.clear()
            self._cond.notify_all()
        return n

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
    and feeds the buffer, holding no more than ``limits`` allow."""

    def __init__(
        self,
        buffer: FrameBuffer,
        preprocess: Preprocessor,
        stop: threading.Event,
        protocol: Protocol | None = None,
        limits: StreamLimits | None = None,
    ) -> None:
        self.buffer, self.preprocess, self.stop, self.protocol = buffer, preprocess, stop, protocol
        self.limits = limits or StreamLimits()
        self.counters = Counters(buffer_capacity=buffer.capacity)
        self.start: ScanStart | None = None
        self.scan: Scan | None = None
        self.refused: str | None = None  # why the last start message was refused
        self.ended = False
        self._expect = Expect(None, self.limits.max_frame_bytes)
        self._top = self.limits.max_frames  # frame indices are below this
        self._refused_id: str | None = None
        self._logged: dict[str, int] = {}
        self._seen: set[int] = set()
        self._rejected: set[int] = set()
        self._frames: dict[int, np.ndarray] = {}
        self._positions: dict[int, Translation] = {}
        self._pending: list[tuple[int, np.ndarray, Translation]] = []
        self.fluorescence: dict[int, Mapping[str, float]] = {}  # counts by element of the frames that carry them

    def handle(self, parts: Sequence[Part]) -> None:
        """Decode one message and account for it; never raises on bad input. Usable frames reach the buffer
        at the next ``flush``."""
        now = time.perf_counter()
        try:
            msg = decode(parts, self._expect)
        except CorruptFrame as exc:
            self._reject(exc.index, exc.reason, exc.scan_id)
            return
        except InvalidStart as exc:
            self._refuse(exc)
            return
        except ProtocolError as exc:
            self.malformed(type(exc).__name__, str(exc))
            return
        if isinstance(msg, Frame):
            self._arrived(msg.nbytes, now)
            self._frame(msg)
        elif isinstance(msg, FrameBatch):
            self._arrived(sum(f.nbytes for f in msg.frames), now)
            for bad in msg.corrupt:
                self._reject(bad.index, bad.reason, bad.scan_id)
            for frame in msg.frames:
                self._frame(frame)
        elif isinstance(msg, Position):
            self._position(msg)
        elif isinstance(msg, ScanStart):
            self._start(msg)
        elif isinstance(msg, ScanEnd):
            self._end(msg)

    def malformed(self, kind: str, detail: str | None = None) -> None:
        """Count a message that could not be used, by kind; log ``detail`` for the first few of each kind."""
        self.counters.malformed[kind] = self.counters.malformed.get(kind, 0) + 1
        logged = self._logged.get(kind, 0)
        if detail is not None and logged < 10:
            self._logged[kind] = logged + 1
            log.warning("message ignored (%s): %s", kind, detail)

    def _arrived(self, nbytes: int, now: float) -> None:
        c = self.counters
        c.first_s = c.first_s or now
        c.last_s = now
        c.bytes += nbytes

    def _start(self, msg: ScanStart) -> None:
        """Record the scan, once every check has passed: a refused start leaves no trace but its count."""
        if self.start is not None:
            self.malformed("second start")
            return
        if self.protocol is not None and msg.protocol != self.protocol:
            self.malformed(f"{msg.protocol} start")
            return
        try:
            scan, preprocess = self._scan(msg)
        except InvalidStart as exc:
            self._refuse(exc)
            return
        self.start, self.scan, self.preprocess = msg, scan, preprocess
        self._expect = Expect(msg.shape, self.limits.max_frame_bytes)
        self._top = msg.expected_frames or self.limits.max_frames
        self.counters.expected = msg.expected_frames
        for index in [i for i in self._positions if i >= self._top]:
            del self._positions[index]

    def _refuse(self, exc: InvalidStart) -> None:
        """Count and log a refused start; remember why (``refused``) and its scan, whose end closes the wait."""
        self.refused, self._refused_id = str(exc), exc.scan_id
        self.malformed(type(exc).__name__, str(exc))

    def _scan(self, msg: ScanStart) -> tuple[Scan, Preprocessor]:
        """The scan a start describes and the preprocessing for its frames, or ``InvalidStart`` (the receiver's
        limits, a preprocessing that does not fit, a geometry that does not compute)."""
        what = f"{msg.protocol} start"
        if msg.frame_bytes > self.limits.max_frame_bytes:
            limit = self.limits.max_frame_bytes
            raise InvalidStart(
                msg.scan_id, f"{what}: frames of {msg.shape} {msg.dtype} are over the {limit} bytes a frame may take"
            )
        if msg.expected_frames is not None and msg.expected_frames > self.limits.max_frames:
            limit = self.limits.max_frames
            raise InvalidStart(
                msg.scan_id, f"{what}: expected_frames {msg.expected_frames} is over the {limit} frames of a scan"
            )
        preprocess = dataclasses.replace(self.preprocess, saturation=msg.saturation)
        own = preprocess.valid
        if msg.valid is not None and (own is None or own.shape == msg.shape):
            preprocess = dataclasses.replace(preprocess, valid=msg.valid if own is None else msg.valid & own)
        try:
            size = preprocess.output_size(msg.shape)
            mask = preprocess.mask(msg.shape)
        except Rejected as exc:
            raise InvalidStart(msg.scan_id, f"{what}: the preprocessing does not fit its frames: {exc}") from None
        geometry = scan_geometry(msg, size, preprocess.binning)
        probe = msg.probe
        if probe is not None and probe.shape[-2:] != (size, size):
            log.warning("scan %s: probe guess of shape %s ignored (frames are %d px)", msg.scan_id, probe.shape, size)
            probe = None
        return Scan(msg.scan_id, msg.protocol, size, geometry, mask, probe, msg.expected_frames), preprocess

    def _end(self, msg: ScanEnd) -> None:
        if self.start is None:
            self.ended = msg.scan_id == self._refused_id  # the end of a refused scan ends the wait
            return
        if msg.scan_id != self.start.scan_id:
            return
        self.ended = True
        sent = msg.frames_sent
        if sent is not None and 0 <= sent <= self.limits.max_frames:
            self.counters.expected = max(self.counters.expected or 0, sent)
        elif sent is not None:
            self.malformed("end", f"scan {msg.scan_id}: frames_sent {sent} is over the {self.limits.max_frames} frames")

    def _count(self, reason: str) -> None:
        self.counters.rejected[reason] = self.counters.rejected.get(reason, 0) + 1

    def _reject(self, index: int, reason: str, scan_id: str) -> None:
        """Account frame ``index`` as rejected; frames of no or another scan, or outside the scan's indices, are
        counted apart (and not remembered)."""
        if self.start is None:
            self._count("no start")
        elif scan_id != self.start.scan_id:
            self._count("scan id")
        elif not 0 <= index < self._top:
            self._count("index")
        elif index in self._seen or index in self._rejected or index in self._frames:
            self.counters.duplicates += 1
        else:
            self._count(reason)
            self._rejected.add(index)

    def _frame(self, msg: Frame) -> None:
        index = msg.index
        if self.start is None or msg.scan_id != self.start.scan_id or not 0 <= index < self._top:
            self._reject(index, "index", msg.scan_id)
            return
        if index in self._seen or index in self._rejected or index in self._frames:
            self.counters.duplicates += 1
            return
        if self.ended:
            self._reject(index, "after end", msg.scan_id)
            return
        position = msg.position_m if msg.position_m is not None else self._positions.pop(index, None)
        if position is None and len(self._frames) >= self.limits.waiting_frames:
            self._reject(index, "waiting full", msg.scan_id)
            return
        try:
            image = self.preprocess(msg.data)
        except Rejected as exc:
            self._reject(index, exc.reason, msg.scan_id)
            return
        if msg.fluorescence is not None:
            self.fluorescence[index] = msg.fluorescence
        if position is None:
            self._frames[index] = image
            self.counters.waiting_peak = max(self.counters.waiting_peak, len(self._frames))
        else:
            self._deliver(index, image, position)

    def _position(self, msg: Position) -> None:
        self.counters.positions += 1
        if self.start is not None and msg.scan_id != self.start.scan_id:
            return
        index = msg.index
        if not 0 <= index < self._top:
            self.malformed("position index", f"position of frame {index}: outside [0, {self._top})")
        elif index in self._frames:
            self._deliver(index, self._frames.pop(index), msg.position_m)
        elif index in self._seen or index in self._rejected:
            return
        elif len(self._positions) >= self.limits.waiting_positions:
            self.malformed("positions full", f"{len(self._positions)} positions already wait for their frames")
        else:
            self._positions[index] = msg.position_m

    def _deliver(self, index: int, image: np.ndarray, position_m: Translation) -> None:
        self._seen.add(index)
        self._pending.append((index, image, position_m))

    def flush(self) -> None:
        """Move the frames delivered since the last flush into the buffer (one lock and one position conversion
        for a burst of messages), waiting while it is full; frames it could not take (``stop`` set) are unseen
        again, so end up missing."""
        if not self._pending or self.scan is None:  # frames are delivered only after the start
            return
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
        self.flush()
        for index in list(self._frames):
            self._frames.pop(index)
            self._reject(index, "no position", self.start.scan_id if self.start else "")
        accounted = self._seen | self._rejected
        top = self.counters.expected if self.counters.expected is not None else max(accounted, default=-1) + 1
        self.counters.missing = top - sum(1 for i in accounted if 0 <= i < top)
        self.counters.buffer_fill = len(self.buffer)
        return self.counters
