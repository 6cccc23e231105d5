"""The frame receiver in three layers: ``decode`` (protocol.py), ``Assembler`` + ``FrameBuffer``
(accounting, the position join, a bounded buffer), and ``Receiver``, a thin socket loop.

Every frame index of a scan ends as received (in the buffer), rejected (with a reason) or
missing (never seen); duplicates are ignored and counted; malformed messages are counted and
logged, never fatal. A receive timeout means "no data".
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import numpy as np
import zmq

from workers.data import Geometry
from workers.io import corners_from_translations
from workers.stream.codecs import serial_openmp
from workers.stream.geometry import scan_geometry
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
    decode,
)

log = logging.getLogger(__name__)
BURST = 256  # messages taken from one socket before looking at the others


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
        out = asdict(self)
        span = (self.last_s or 0.0) - (self.first_s or 0.0)
        out["frames_rejected"] = sum(self.rejected.values())
        out["frames_per_s"] = self.received / span if span > 0 else 0.0
        out["bytes_per_s"] = self.bytes / span if span > 0 else 0.0
        return out


class FrameBuffer:
    """A bounded FIFO of preprocessed frames: ``put`` blocks while full (backpressure).

    Positions go in as sample translations (metres) and come out as pixel corners through
    ``to_pixels`` (set once the scan's geometry is known), converted a batch at a time.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.to_pixels: Callable[[np.ndarray], np.ndarray] | None = None
        self._items: deque[tuple[int, np.ndarray, Translation]] = deque()
        self._cond = threading.Condition()

    def __len__(self) -> int:
        return len(self._items)

    def put_many(self, items: Sequence[tuple[int, np.ndarray, Translation]], stop: threading.Event) -> int:
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
        index, frames, positions = zip(*items, strict=True)
        assert self.to_pixels is not None
        dtypes = {f.dtype for f in frames}
        stacked = np.stack(frames) if len(dtypes) == 1 else np.stack(frames, dtype=np.float32, casting="unsafe")
        return np.asarray(index), stacked, self.to_pixels(np.asarray(positions, dtype=np.float64))


class Assembler:
    """Accounts frames of one scan, joins frames with positions by index, feeds the buffer."""

    def __init__(
        self, buffer: FrameBuffer, preprocess: Preprocessor, stop: threading.Event, protocol: Protocol | None = None
    ) -> None:
        self.buffer, self.preprocess, self.stop, self.protocol = buffer, preprocess, stop, protocol
        self.counters = Counters(buffer_capacity=buffer.capacity)
        self.start: ScanStart | None = None
        self.geometry: Geometry | None = None
        self.size = 0
        self.mask: np.ndarray | None = None
        self.ended = False
        self.started = threading.Event()
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
        if msg.valid is not None and msg.valid.shape == msg.shape and (own is None or own.shape == msg.shape):
            valid = msg.valid if own is None else msg.valid & own
            self.preprocess = dataclasses.replace(self.preprocess, valid=valid)
        self.size = self.preprocess.output_size(msg.shape)
        self.geometry = scan_geometry(msg, self.size, self.preprocess.binning)
        try:
            self.mask = self.preprocess.mask(msg.shape)
        except Rejected as exc:  # the preprocessing does not fit this detector: every frame is rejected for it
            log.warning("scan %s: %s", msg.scan_id, exc)
        pixel = (self.geometry.pixel_size, self.geometry.pixel_size)
        self.buffer.to_pixels = partial(corners_from_translations, pixel=pixel, size=self.size)
        self.counters.expected = msg.expected_frames
        self.started.set()

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
        """Move the frames delivered since the last flush into the buffer (one lock for a burst of messages),
        waiting while it is full; frames it could not take (``stop`` set) are unseen again, so end up missing."""
        if not self._pending:
            return
        stored = self.buffer.put_many(self._pending, self.stop)
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


class Receiver:
    """PULL sockets bound at ``endpoint`` (frames) and optionally ``positions`` (position stream).

    ``protocol``: accept only scans started in that format (None: any).
    ``start()`` runs the loop on a thread until the scan ends (then waits ``grace_s`` for late
    positions), ``idle_timeout_s`` passes without any message, or ``close()``. Bind to
    ``tcp://127.0.0.1:*`` and read ``endpoint`` back for an ephemeral port.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        positions: str | None = None,
        preprocess: Preprocessor | None = None,
        protocol: Protocol | None = None,
        capacity: int = 4096,
        idle_timeout_s: float | None = None,
        grace_s: float = 1.0,
        hwm: int = 1000,
    ) -> None:
        self.stop = threading.Event()
        self.done = threading.Event()
        self.buffer = FrameBuffer(capacity)
        self.assembler = Assembler(self.buffer, preprocess or Preprocessor(), self.stop, protocol)
        self.idle_timeout_s, self.grace_s = idle_timeout_s, grace_s
        self._context = zmq.Context()
        self._sockets = [self._bind(endpoint, hwm)]
        if positions is not None:
            self._sockets.append(self._bind(positions, hwm))
        self.endpoint = self._sockets[0].getsockopt_string(zmq.LAST_ENDPOINT)
        self.positions_endpoint = self._sockets[1].getsockopt_string(zmq.LAST_ENDPOINT) if positions else None
        self._thread: threading.Thread | None = None

    def _bind(self, endpoint: str, hwm: int) -> zmq.Socket:
        sock = self._context.socket(zmq.PULL)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, hwm)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            sock.close(0)
            self._context.term()
            raise OSError(f"cannot listen on {endpoint}: {exc}") from None
        return sock

    @property
    def counters(self) -> Counters:
        c = self.assembler.counters
        c.buffer_fill = len(self.buffer)
        return c

    def start(self) -> Receiver:
        self._thread = threading.Thread(target=self.run, name="receiver", daemon=True)
        self._thread.start()
        return self

    def run(self) -> None:
        """The socket loop (call directly or via ``start``); sets ``done`` when the scan is closed."""
        serial_openmp()
        poller = zmq.Poller()
        for sock in self._sockets:
            poller.register(sock, zmq.POLLIN)
        positions_only = zmq.Poller()
        positions_only.register(self._sockets[-1], zmq.POLLIN)
        last = time.monotonic()
        ended_at: float | None = None
        asm = self.assembler
        try:
            while not self.stop.is_set():
                ready = dict((positions_only if self._holding() else poller).poll(100))
                now = time.monotonic()
                for sock in self._sockets:
                    for _ in range(BURST if sock in ready else 0):
                        if sock is self._sockets[0] and self._holding():
                            break
                        try:
                            parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        try:
                            asm.handle([p.buffer for p in parts])
                        except Exception:  # a bug must not end the scan: count the message, log it, go on
                            asm.malformed("internal error")
                            log.exception("message could not be handled")
                        last = now
                    asm.flush()
                if asm.ended and ended_at is None:
                    ended_at = now
                if ended_at is not None and (asm.waiting_for_positions == 0 or now - ended_at > self.grace_s):
                    break
                if self.idle_timeout_s is not None and now - last > self.idle_timeout_s:
                    log.warning("no message for %.1f s: closing the scan", self.idle_timeout_s)
                    break
        finally:
            asm.finish()
            self.done.set()

    def _holding(self) -> bool:
        """Too many frames wait for positions from the position socket: read only that one for now."""
        return len(self._sockets) > 1 and self.assembler.waiting_for_positions >= self.buffer.capacity

    def close(self) -> None:
        """Stop the loop, join its thread, close the sockets (linger 0)."""
        self.stop.set()
        if self._thread is not None:
            self._thread.join()
        for sock in self._sockets:
            sock.close(0)
        self._context.term()
