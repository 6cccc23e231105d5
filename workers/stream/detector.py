"""A virtual detector: replays a scan (file or simulation) over ZeroMQ, with seeded fault injection."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
import zmq

from workers import units
from workers.data import ScanData
from workers.stream.formats import FORMATS, native
from workers.stream.protocol import Part, Protocol, ScanStart


@dataclass(frozen=True)
class Faults:
    """Fractions of frames to drop, send twice, swap with the next one, or corrupt; seeded."""

    drop: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    corrupt: float = 0.0
    seed: int = 0


@dataclass
class ReplayReport:
    """What the detector did: frames and bytes sent, the faults it injected (frame indices), timing."""

    frames: int = 0
    messages: int = 0
    bytes: int = 0
    dropped: list[int] = field(default_factory=list)
    duplicated: list[int] = field(default_factory=list)
    reordered: list[int] = field(default_factory=list)
    corrupted: list[int] = field(default_factory=list)
    started_s: float = 0.0
    last_frame_s: float = 0.0

    def as_dict(self) -> dict[str, object]:
        span = self.last_frame_s - self.started_s
        return {
            "frames_sent": self.frames,
            "messages": self.messages,
            "bytes": self.bytes,
            "dropped": len(self.dropped),
            "duplicated": len(self.duplicated),
            "reordered": len(self.reordered),
            "corrupted": len(self.corrupted),
            "frames_per_s": self.frames / span if span > 0 else 0.0,
        }


def scan_start(data: ScanData, scan_id: str, dtype: str) -> ScanStart:
    """The start message of ``data``: the detector pixel that gives its sample-plane pixel, and, for integer
    counts, a saturation value: the largest count of the smallest readout bit depth that holds the data (as a
    detector declares its own), so that the receiver can tell an implausible (corrupt) frame."""
    g, m = data.geometry, data.frame_size
    if g.wavelength <= 0 or g.distance <= 0 or g.pixel_size <= 0:
        raise ValueError(f"{data.source}: replay needs wavelength, distance and pixel size, got {g}")
    saturation = (1 << max(int(data.intensities.max()).bit_length(), 1)) - 1 if dtype.startswith("uint") else None
    return ScanStart(
        scan_id,
        (m, m),
        dtype,
        units.energy_ev_from_wavelength(g.wavelength),
        g.distance,
        units.detector_pixel(g.kind, g.pixel_size, g.wavelength, g.distance, m),
        g.kind,
        data.n_frames,
        data.probe,
        valid=data.mask,
        saturation=saturation,
    )


def wire_dtype(data: ScanData) -> str:
    """uint16 where every intensity is a count that fits, else float32."""
    i = data.intensities
    return "uint16" if float(i.max()) <= 65535 and np.array_equal(i, np.round(i)) else "float32"


def corrupt(parts: list[Part], rng: np.random.Generator) -> list[Part]:
    """Flip bytes in the payload (the largest part) after its checksum was computed."""
    k = max(range(len(parts)), key=lambda j: len(memoryview(parts[j]).cast("B")))
    payload = bytearray(memoryview(parts[k]).cast("B"))
    where = rng.integers(len(payload) // 2, len(payload), size=4)
    for w in where:
        payload[w] ^= 0xFF
    return [*parts[:k], bytes(payload), *parts[k + 1 :]]


def _counts(data: ScanData) -> list[dict[str, float]] | None:
    """Each frame's fluorescence counts by element (the native ``xrf`` field), or None for a scan without."""
    if data.fluorescence is None:
        return None
    names = data.fluorescence.elements
    return [dict(zip(names, map(float, column), strict=True)) for column in data.fluorescence.counts.T]


def replay(
    data: ScanData,
    endpoint: str,
    *,
    kind: Protocol = Protocol.NATIVE,
    compression: str | None = None,
    rate_hz: float | None = None,
    positions_endpoint: str | None = None,
    position_lag: int = 0,
    faults: Faults = Faults(),
    scan_id: str = "1",
    batch: int = 1,
    stop: threading.Event | None = None,
    linger_ms: int = 5000,
) -> ReplayReport:
    """Send ``data`` as one scan to ``endpoint`` (PUSH, connecting) at ``rate_hz`` frames/s (None: as fast as possible).

    Fluorescence counts (a scan's ``fluorescence``) travel in native frame headers (``xrf``); the DECTRIS
    formats have no field for them. Positions travel in the frame headers (native, v2), else as position messages: on
    ``positions_endpoint`` when given (sent ``position_lag`` frames late; negative: early),
    otherwise on the frame socket. ``batch`` > 1 (native only) sends that many frames per
    ``frames`` message. ``linger_ms`` bounds how long closing waits to flush.
    """
    if batch < 1 or (batch > 1 and kind != Protocol.NATIVE):
        raise ValueError(f"batch must be 1, or >= 1 with the native protocol (got {batch} with {kind})")
    dtype = wire_dtype(data)
    frames = np.clip(data.intensities, 0, None).astype(dtype)
    translations = units.translations_from_corners(data.positions, data.geometry.pixel_size, data.frame_size).tolist()
    fmt = FORMATS[kind]
    separate = positions_endpoint is not None or not fmt.positions_in_frames
    xrf = _counts(data) if kind == Protocol.NATIVE else None
    rng = np.random.default_rng(faults.seed)
    report = ReplayReport()
    context = zmq.Context()
    sock = context.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, linger_ms)
    sock.connect(endpoint)
    psock = sock
    if positions_endpoint is not None:
        psock = context.socket(zmq.PUSH)
        psock.setsockopt(zmq.LINGER, linger_ms)
        psock.connect(positions_endpoint)

    def send(s: zmq.Socket, parts: list[Part]) -> None:
        s.send_multipart(parts, copy=False)
        report.messages += 1
        report.bytes += sum(memoryview(p).nbytes for p in parts)

    pending: list[tuple[int, np.ndarray, bool]] = []

    def send_frames() -> None:
        """Send the pending frames: one message each, or one ``frames`` message (a corrupted frame: its own part)."""
        if batch == 1:
            for i, frame, bad in pending:
                where = None if separate else translations[i]
                if xrf is None:
                    parts = fmt.encode_frame(scan_id, i, frame, where, compression)
                else:
                    parts = native.encode_frame(scan_id, i, frame, where, fluorescence=xrf[i])
                send(sock, corrupt(parts, rng) if bad else parts)
        elif pending:
            index = [i for i, _, _ in pending]
            where = None if separate else [translations[i] for i in index]
            counts = None if xrf is None else [xrf[i] for i in index]
            parts = native.encode_frames(scan_id, index, [f for _, f, _ in pending], where, counts)
            for k, (_, _, bad) in enumerate(pending):
                if bad:
                    parts = [*parts[: k + 1], *corrupt([parts[k + 1]], rng), *parts[k + 2 :]]
            send(sock, parts)
        report.last_frame_s = time.time()
        pending.clear()

    order = list(range(data.n_frames))
    for i in range(data.n_frames - 1):
        if rng.uniform() < faults.reorder and order[i] == i:
            order[i], order[i + 1] = order[i + 1], order[i]
            report.reordered.append(i)
    events = [(float(step), "frame", i) for step, i in enumerate(order)]
    if separate:
        events += [(j + position_lag + 0.5, "position", j) for j in range(data.n_frames)]
    events.sort()
    rolls = rng.uniform(size=(data.n_frames, 3)).tolist()  # drop, corrupt, duplicate: drawn at once, not per frame
    try:
        send(sock, fmt.encode_start(scan_start(data, scan_id, dtype)))
        report.started_s = time.time()
        t0 = time.perf_counter()
        for key, what, i in events:
            if stop is not None and stop.is_set():
                break
            if what == "position":
                send(psock, native.encode_position(scan_id, i, translations[i]))
                continue
            if rate_hz:
                delay = t0 + key / rate_hz - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            roll = rolls[i]
            if roll[0] < faults.drop:
                report.dropped.append(i)
                continue
            bad = roll[1] < faults.corrupt
            if bad:
                report.corrupted.append(i)
            pending.append((i, frames[i], bad))
            report.frames += 1
            if roll[2] < faults.duplicate:
                pending.append((i, frames[i], bad))
                report.duplicated.append(i)
            if len(pending) >= batch:
                send_frames()
        send_frames()
        send(sock, fmt.encode_end(scan_id, data.n_frames))
    finally:
        sock.close()
        if psock is not sock:
            psock.close()
        context.term()
    return report
