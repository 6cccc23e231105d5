"""The frame receiver: a thin socket loop around ``Assembler`` (``workers.stream.assembler``) that tells its users
the scan (``scan()``) and the accounting (``counters()``) while frames collect in its ``buffer``.

Messages are decoded by ``workers.stream.formats``; a receive timeout means "no data". What it holds is
bounded by ``StreamLimits`` (``workers.job``): the frame buffer, the frames waiting for positions, the
messages ZeroMQ queues and the size of each (``MAXMSGSIZE``: a larger part is dropped by ZeroMQ before
it is allocated, and its sender disconnected; a larger multipart message is counted and dropped here).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

import zmq

from workers.job import StreamLimits
from workers.stream.assembler import Assembler, FrameBuffer, Scan
from workers.stream.codecs import serial_openmp
from workers.stream.preprocess import Preprocessor
from workers.stream.protocol import Protocol

log = logging.getLogger(__name__)
BURST = 256  # messages taken from one socket before looking at the others


class Receiver:
    """PULL sockets bound at ``endpoint`` (frames) and optionally ``positions`` (position stream).

    ``protocol``: accept only scans started in that format (None: any); ``limits``: the bounds on what it holds.
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
        limits: StreamLimits | None = None,
        idle_timeout_s: float | None = None,
        grace_s: float = 1.0,
    ) -> None:
        self.limits = limits or StreamLimits()
        self.stop = threading.Event()
        self.done = threading.Event()
        self.buffer = FrameBuffer(self.limits.buffer_frames)
        self._assembler = Assembler(self.buffer, preprocess or Preprocessor(), self.stop, protocol, self.limits)
        self.idle_timeout_s, self.grace_s = idle_timeout_s, grace_s
        self._context = zmq.Context()
        self._sockets = [self._bind(endpoint)]
        if positions is not None:
            self._sockets.append(self._bind(positions))
        self.endpoint = self._sockets[0].getsockopt_string(zmq.LAST_ENDPOINT)
        self.positions_endpoint = self._sockets[1].getsockopt_string(zmq.LAST_ENDPOINT) if positions else None
        self._thread: threading.Thread | None = None

    def _bind(self, endpoint: str) -> zmq.Socket:
        sock = self._context.socket(zmq.PULL)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, self.limits.queue_messages)
        sock.setsockopt(zmq.MAXMSGSIZE, self.limits.max_message_bytes)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            sock.close(0)
            self._context.term()
            raise OSError(f"cannot listen on {endpoint}: {exc}") from None
        return sock

    def scan(self) -> Scan | None:
        """The scan being received (geometry, mask, probe guess, ...), or None before its start message."""
        return self._assembler.scan

    def refused(self) -> str | None:
        """Why the last start message was refused (one line), or None."""
        return self._assembler.refused

    def counters(self) -> dict[str, Any]:
        """The frame accounting so far (``Counters.as_dict``), with the buffer's current fill."""
        return self._assembler.counters.as_dict() | {"buffer_fill": len(self.buffer)}

    def indices(self) -> tuple[frozenset[int], frozenset[int]]:
        """The frame indices received and rejected so far (copies: safe to call while the loop runs)."""
        return frozenset(self._assembler._seen), frozenset(self._assembler._rejected)

    def fluorescence(self, indices: Iterable[int]) -> list[Mapping[str, float] | None]:
        """The fluorescence counts by element of frames ``indices`` (None where a frame carried none)."""
        counts = self._assembler.fluorescence
        return [counts.get(int(i)) for i in indices]

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
        asm = self._assembler
        largest = self.limits.max_message_bytes
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
                        buffers = [p.buffer for p in parts]
                        last = now
                        if len(buffers) > 1 and sum(b.nbytes for b in buffers) > largest:
                            asm.malformed("message size", f"{len(buffers)} parts over {largest} bytes")
                            continue
                        try:
                            asm.handle(buffers)
                        except Exception:  # a bug must not end the scan: count the message, log it, go on
                            asm.malformed("internal error")
                            log.exception("message could not be handled")
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
        return len(self._sockets) > 1 and self._assembler.waiting_for_positions >= self.limits.waiting_frames

    def close(self) -> None:
        """Stop the loop, join its thread, close the sockets (linger 0)."""
        self.stop.set()
        if self._thread is not None:
            self._thread.join()
        for sock in self._sockets:
            sock.close(0)
        self._context.term()
