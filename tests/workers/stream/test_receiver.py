"""Receiver over real ZeroMQ sockets on loopback: every format, the position join, faults, garbage, backpressure."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import zmq

from workers.data import ScanData
from workers.job import StreamLimits
from workers.stream import protocol as p
from workers.stream.detector import Faults, ReplayReport, replay
from workers.stream.formats import dectris_v1, native
from workers.stream.protocol import Protocol
from workers.stream.receiver import Receiver

ANY = "tcp://127.0.0.1:*"


def receive(
    data: ScanData,
    *,
    kind: Protocol = Protocol.NATIVE,
    compression: str | None = None,
    separate: bool = False,
    lag: int = 0,
    faults: Faults | None = None,
    batch: int = 1,
) -> tuple[ReplayReport, dict, tuple]:
    """Replay ``data`` into a fresh receiver; return the detector's report, the counters and the frames."""
    receiver = Receiver(ANY, positions=ANY if separate else None, idle_timeout_s=10).start()
    try:
        positions = receiver.positions_endpoint if separate else None
        report = replay(
            data,
            receiver.endpoint,
            kind=kind,
            compression=compression,
            positions_endpoint=positions,
            position_lag=lag,
            faults=faults or Faults(),
            batch=batch,
        )
        assert receiver.done.wait(20)
        return report, receiver.counters(), receiver.buffer.drain()
    finally:
        receiver.close()


def assert_placed_right(data: ScanData, drained: tuple) -> None:
    index, frames, corners = drained
    np.testing.assert_allclose(corners, data.positions[index], atol=1e-6)
    np.testing.assert_array_equal(frames, data.intensities[index])


@pytest.mark.parametrize(
    ("kind", "compression", "separate", "lag"),
    [
        (Protocol.NATIVE, None, False, 0),
        (Protocol.NATIVE, None, True, 7),
        (Protocol.NATIVE, None, True, -7),
        (Protocol.NATIVE, "batch", False, 0),
        (Protocol.DECTRIS_V1, None, False, 0),
        (Protocol.DECTRIS_V1, "bslz4", True, 5),
        (Protocol.DECTRIS_V1, "lz4", True, -5),
        (Protocol.DECTRIS_V2, None, False, 0),
        (Protocol.DECTRIS_V2, "bslz4", False, 0),
        (Protocol.DECTRIS_V2, "lz4", True, 3),
    ],
)
def test_every_format_round_trips_over_tcp(
    small_scan: ScanData, kind: Protocol, compression: str | None, separate: bool, lag: int
) -> None:
    batch = 16 if compression == "batch" else 1
    compression = None if compression == "batch" else compression
    report, c, drained = receive(
        small_scan, kind=kind, compression=compression, separate=separate, lag=lag, batch=batch
    )
    n = small_scan.n_frames
    assert report.frames == n
    assert report.messages == 2 + (n if separate or kind == Protocol.DECTRIS_V1 else 0) + -(-n // batch)
    assert (c["received"], c["frames_rejected"], c["missing"], c["duplicates"], c["malformed"]) == (n, 0, 0, 0, {})
    assert sorted(drained[0]) == list(range(n))
    assert_placed_right(small_scan, drained)


@pytest.mark.parametrize("batch", [1, 8])
def test_faults_are_accounted(small_scan: ScanData, batch: int) -> None:
    faults = Faults(drop=0.05, duplicate=0.1, reorder=0.2, corrupt=0.05, seed=3)
    report, c, drained = receive(small_scan, separate=True, lag=4, faults=faults, batch=batch)
    n = small_scan.n_frames
    assert report.dropped and report.duplicated and report.reordered and report.corrupted
    assert c["duplicates"] == len(report.duplicated)
    assert c["rejected"] == {"checksum": len(report.corrupted)}
    assert c["missing"] == len(report.dropped)
    assert c["received"] == n - len(report.dropped) - len(report.corrupted)
    assert c["received"] + c["frames_rejected"] + c["missing"] == n
    assert set(drained[0]) == set(range(n)) - set(report.dropped) - set(report.corrupted)
    assert_placed_right(small_scan, drained)


def test_frames_without_positions_are_rejected_after_the_grace_period() -> None:
    """SIMPLON v1 frames carry no position; none arrive here, so each frame is rejected once the scan closes."""
    receiver = Receiver(ANY, idle_timeout_s=5, grace_s=0.2).start()
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 1000)
    push.connect(receiver.endpoint)
    frame = np.ones((16, 16), np.uint16)
    try:
        push.send_multipart(dectris_v1.encode_start(p.ScanStart("4", (16, 16), "uint16", 8e3, 2.0, 75e-6, "far", 5)))
        for i in range(5):
            push.send_multipart(dectris_v1.encode_frame("4", i, frame, None, "bslz4"))
        push.send_multipart(native.encode_position("4", 2, np.zeros(3)))
        push.send_multipart(dectris_v1.encode_end("4"))
        assert receiver.done.wait(10)
        c = receiver.counters()
    finally:
        push.close(0)
        context.term()
        receiver.close()
    assert c["received"] == 1 and c["rejected"] == {"no position": 4} and c["missing"] == 0


def test_backpressure_bounds_the_buffer_and_loses_nothing(small_scan: ScanData) -> None:
    receiver = Receiver(ANY, limits=StreamLimits(buffer_frames=8, queue_messages=4), idle_timeout_s=10).start()
    got: list[int] = []
    peak = 0
    sender = threading.Thread(target=replay, args=(small_scan, receiver.endpoint))
    sender.start()
    try:
        while not (receiver.done.is_set() and len(receiver.buffer) == 0):
            peak = max(peak, len(receiver.buffer))
            receiver.buffer.wait(0.05)
            got += list(receiver.buffer.drain(limit=3)[0])
            threading.Event().wait(0.005)
    finally:
        sender.join()
        receiver.close()
    assert peak <= 8
    assert sorted(got) == list(range(small_scan.n_frames))


def test_garbage_never_kills_the_receiver(small_scan: ScanData) -> None:
    """Thousands of random multipart messages, then a valid scan: the scan is received in full."""
    rng = np.random.default_rng(5)
    data = small_scan.subset(slice(0, 30))
    receiver = Receiver(ANY, idle_timeout_s=10).start()
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(receiver.endpoint)
    frame = native.encode_frame("other", 0, np.ones((64, 64), np.uint16), None)
    valid = [bytes(memoryview(x).cast("B")) for x in frame]
    try:
        for k in range(3000):
            if k % 3 == 0:
                parts = [rng.bytes(int(rng.integers(0, 100))) for _ in range(int(rng.integers(1, 5)))]
            elif k % 3 == 1:
                parts = [bytearray(x) for x in valid]
                for at in rng.integers(0, len(parts[0]), size=2):
                    parts[0][at] = int(rng.integers(32, 127))
            else:
                parts = [rng.choice([b"{}", b"\xd9\xd9\xf7\xa0", b"[1,2]", b'{"htype": 5}', valid[0]])]
            push.send_multipart(parts)
        replay(data, receiver.endpoint)
        assert receiver.done.wait(20)
        c = receiver.counters()
        assert not receiver.buffer.drain()[0].tolist() == []
    finally:
        push.close(0)
        context.term()
        receiver.close()
    assert c["received"] == 30 and c["missing"] == 0, c
    assert sum(c["malformed"].values()) > 1000


@pytest.mark.parametrize("kind", [Protocol.NATIVE, Protocol.DECTRIS_V1, Protocol.DECTRIS_V2])
def test_the_detector_pixel_mask_reaches_the_engine_mask(small_scan: ScanData, kind: Protocol) -> None:
    """A scan with bad pixels: the start message carries the mask, the receiver zeroes those pixels and
    hands the mask on (``Receiver.scan().mask``, what the engines get)."""
    valid = np.ones((64, 64), bool)
    valid[3, 7] = valid[40:44, 60] = False
    data = small_scan.subset(slice(0, 20))
    data.mask = valid
    receiver = Receiver(ANY, idle_timeout_s=10).start()
    try:
        replay(data, receiver.endpoint, kind=kind)
        assert receiver.done.wait(20)
        index, frames, _ = receiver.buffer.drain()
        scan = receiver.scan()
    finally:
        receiver.close()
    assert len(index) == 20 and scan is not None and scan.mask is not None
    np.testing.assert_array_equal(scan.mask, valid)
    assert (frames[:, ~valid] == 0).all()
    np.testing.assert_array_equal(frames[:, valid], data.intensities[index][:, valid])


def test_frames_waiting_for_late_positions_are_bounded_too(small_scan: ScanData) -> None:
    """Positions 30 frames late on their own socket, at most 8 frames may wait: at most 8 frames ever wait for a
    position (the frame socket is not read meanwhile), and every frame still arrives."""
    limits = StreamLimits(buffer_frames=8, waiting_frames=8, queue_messages=4)
    receiver = Receiver(ANY, positions=ANY, limits=limits, idle_timeout_s=10).start()
    got = []
    sender = threading.Thread(
        target=replay,
        args=(small_scan, receiver.endpoint),
        kwargs={"positions_endpoint": receiver.positions_endpoint, "position_lag": 30},
    )
    sender.start()
    try:
        while not (receiver.done.is_set() and len(receiver.buffer) == 0):
            got += list(receiver.buffer.drain()[0])
            threading.Event().wait(0.001)
    finally:
        sender.join()
        receiver.close()
        peak = receiver.counters()["waiting_peak"]
    assert 0 < peak <= 8
    assert sorted(got) == list(range(small_scan.n_frames))
