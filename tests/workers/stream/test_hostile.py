"""Hostile and broken streams over real ZeroMQ sockets: decompression bombs, frames that never get positions, bad
start messages, absurd indices, oversized messages, corrupt frames without checksums, a stop before any frame."""

from __future__ import annotations

import json
import socket
import threading
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import zmq

from service.cli import main
from workers.data import ScanData
from workers.errors import DataError, StoppedBeforeFrames
from workers.job import StreamLimits
from workers.sources import StreamSource
from workers.stream import protocol as p
from workers.stream.detector import Faults, replay
from workers.stream.formats import dectris_v1, dectris_v2, native
from workers.stream.protocol import Part, Protocol
from workers.stream.receiver import Receiver

ANY = "tcp://127.0.0.1:*"
START = p.ScanStart("5", (32, 32), "uint16", 8000.0, 2.0, 75e-6, "far", None)
FRAME = np.random.default_rng(0).poisson(5, (32, 32)).astype(np.uint16)


@contextmanager
def receiving(limits: StreamLimits | None = None) -> Iterator[tuple[Receiver, zmq.Socket]]:
    """A started receiver and a PUSH socket connected to it; closed afterwards."""
    receiver = Receiver(ANY, limits=limits, idle_timeout_s=10, grace_s=0.2).start()
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 2000)
    push.connect(receiver.endpoint)
    try:
        yield receiver, push
    finally:
        push.close(0)
        context.term()
        receiver.close()


def send_all(limits: StreamLimits | None, messages: list[list[Part]]) -> tuple[Receiver, dict]:
    """Send ``messages`` (the last one ends the scan) and return the receiver and its final counters."""
    with receiving(limits) as (receiver, push):
        for parts in messages:
            push.send_multipart(parts, copy=False)
        assert receiver.done.wait(20)
        return receiver, receiver.counters()


def native_start(**fields: object) -> list[Part]:
    """A native start message with ``fields`` over those of ``START`` (ScanStart itself refuses bad values)."""
    head = json.loads(native.encode_start(START)[0]) | fields
    return [json.dumps(head).encode()]


def test_a_decompression_bomb_is_refused_before_it_is_inflated() -> None:
    """A ~100 kB bitshuffle-LZ4 frame that declares 4096 x 4096 (32 MiB inflated) into a 32 x 32 scan: refused
    (``shape``) while the receiver allocates far less than the inflated frame."""
    bomb = dectris_v2.encode_frame("5", 0, np.zeros((4096, 4096), np.uint16), np.zeros(3), "bslz4")
    assert len(bomb[0]) < 200_000
    frames = [dectris_v2.encode_frame("5", i, FRAME, np.zeros(3), "bslz4") for i in (1, 2)]
    tracemalloc.start()
    try:
        _, c = send_all(None, [dectris_v2.encode_start(START), bomb, *frames, dectris_v2.encode_end("5")])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert c["rejected"] == {"shape": 1} and c["received"] == 2
    assert peak < 8 << 20, f"{peak / 2**20:.0f} MiB allocated"


def test_frames_waiting_for_positions_on_one_socket_are_bounded() -> None:
    """SIMPLON v1 frames and no positions on the one socket: at most ``waiting_frames`` are held, the rest are
    rejected at once (``waiting full``), the held ones when the scan ends (``no position``)."""
    frames = [dectris_v1.encode_frame("5", i, FRAME, None, None) for i in range(300)]
    limits = StreamLimits(waiting_frames=100)
    _, c = send_all(limits, [dectris_v1.encode_start(START), *frames, dectris_v1.encode_end("5")])
    assert c["waiting_peak"] == 100
    assert c["rejected"] == {"waiting full": 200, "no position": 100} and c["received"] == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [("energy_ev", 0), ("pixel_size_m", 0), ("distance_m", -2.0), ("expected_frames", -5), ("dtype", "complex128")],
)
def test_a_bad_start_is_refused_with_its_reason_and_the_scan_ends_cleanly(field: str, value: object) -> None:
    """The start is refused before anything is recorded (counted, logged, named by ``refused()``); its frames are
    rejected ``no start``; its end closes the scan; a job on it fails with one clear line naming the field."""
    frames = [native.encode_frame("5", i, FRAME, np.zeros(3)) for i in range(3)]
    receiver, c = send_all(None, [native_start(**{field: value}), *frames, native.encode_end("5", 3)])
    refused = receiver.refused()
    assert refused is not None and field in refused
    assert c["malformed"] in ({"InvalidStart": 1}, {"UnknownEncoding": 1}) and c["rejected"] == {"no start": 3}
    if field != "dtype":  # an unknown dtype is refused by the decoder, before any start exists
        with pytest.raises(DataError, match=f"start message refused: native start: {field}"):
            StreamSource(receiver).first(lambda: False)


def test_listen_reports_a_refused_start_and_exits_cleanly(capsys: pytest.CaptureFixture) -> None:
    """``listen`` on a scan whose start has ``pixel_size_m: 0`` (it used to exit with an AssertionError)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        endpoint = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    codes: list[int] = []
    listener = threading.Thread(
        target=lambda: codes.append(main(["listen", endpoint, "--json", "--idle-timeout", "10"]))
    )
    listener.start()
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 2000)
    push.connect(endpoint)
    for parts in [
        native_start(pixel_size_m=0),
        native.encode_frame("5", 0, FRAME, np.zeros(3)),
        native.encode_end("5"),
    ]:
        push.send_multipart(parts)
    listener.join(20)
    push.close()
    context.term()
    out = json.loads(capsys.readouterr().out)
    assert codes == [0] and out["malformed"] == {"InvalidStart": 1} and out["rejected"] == {"no start": 1}
    assert out["refused"].startswith("native start: pixel_size_m must be a positive finite number, got 0")


def test_a_start_over_the_limits_is_refused() -> None:
    limits = StreamLimits(max_frames=1000, max_frame_bytes=1024)
    receiver, c = send_all(limits, [native.encode_start(START), native.encode_end("5")])
    assert c["malformed"] == {"InvalidStart": 1} and "2048 bytes" not in (receiver.refused() or "x")
    assert "over the 1024 bytes" in (receiver.refused() or "")
    big = native_start(expected_frames=5000, shape=[16, 16])
    receiver, c = send_all(limits, [big, native.encode_end("5")])
    assert c["malformed"] == {"InvalidStart": 1} and "over the 1000 frames" in (receiver.refused() or "")


def test_positions_waiting_for_their_frames_are_bounded() -> None:
    """30 positions before their SIMPLON v1 frames, 10 may wait: 10 frames are joined, the other positions are
    ignored (``positions full``) and their frames rejected at the end (``no position``); a position of frame
    2**40 is ignored too (``position index``)."""
    positions = [native.encode_position("5", i, np.zeros(3)) for i in [*range(30), 2**40]]
    frames = [dectris_v1.encode_frame("5", i, FRAME, None, None) for i in range(30)]
    limits = StreamLimits(waiting_positions=10)
    _, c = send_all(limits, [dectris_v1.encode_start(START), *positions, *frames, dectris_v1.encode_end("5")])
    assert c["received"] == 10 and c["rejected"] == {"no position": 20}
    assert c["malformed"] == {"positions full": 20, "position index": 1}


def test_an_absurd_frame_index_is_rejected_and_missing_stays_bounded() -> None:
    """No declared count: an index of 2**62 is rejected (``index``) and does not count 4.6e18 frames missing;
    nor does an end that claims 2**62 frames sent."""
    frames = [native.encode_frame("5", i, FRAME, np.zeros(3)) for i in (0, 1, 2**62, -3)]
    _, c = send_all(None, [native.encode_start(START), *frames, native.encode_end("5", 2**62)])
    assert c["received"] == 2 and c["rejected"] == {"index": 2} and c["missing"] == 0
    assert c["malformed"] == {"end": 1}


def test_a_short_native_payload_is_a_size_reject() -> None:
    head, payload = native.encode_frame("5", 0, FRAME, np.zeros(3))
    short = [head, bytes(memoryview(payload).cast("B"))[:-10]]
    _, c = send_all(None, [native.encode_start(START), short, native.encode_end("5", 1)])
    assert c["rejected"] == {"size": 1}


def test_a_message_over_the_size_limit_is_counted_and_dropped() -> None:
    """Four 2 KiB frames in one message, 4 KiB allowed: the message is dropped unread (``message size``)."""
    batch = native.encode_frames("5", [0, 1, 2, 3], [FRAME] * 4, [np.zeros(3)] * 4)
    single = native.encode_frame("5", 4, FRAME, np.zeros(3))
    limits = StreamLimits(max_message_bytes=4096)
    _, c = send_all(limits, [native.encode_start(START), batch, single, native.encode_end("5", 5)])
    assert c["malformed"] == {"message size": 1} and c["received"] == 1 and c["missing"] == 4


def test_a_part_over_the_size_limit_is_dropped_by_zeromq_and_the_sender_reconnects() -> None:
    """A single 8 KiB part, 4 KiB allowed: ZeroMQ drops it before allocating it (MAXMSGSIZE) and disconnects
    the sender, which reconnects; its frame ends missing, the frames after it arrive."""
    with receiving(StreamLimits(max_message_bytes=4096)) as (receiver, push):
        push.send_multipart(dectris_v2.encode_start(START))
        push.send_multipart(dectris_v2.encode_frame("5", 0, FRAME, [0.0, 0.0, 0.0], None))
        push.send_multipart(dectris_v2.encode_frame("5", 1, np.ones((64, 64), np.uint16), [0.0, 0.0, 0.0], None))
        threading.Event().wait(0.5)  # the sender reconnects
        for parts in [dectris_v2.encode_frame("5", 2, FRAME, [0.0, 0.0, 0.0], None), dectris_v2.encode_end("5")]:
            push.send_multipart(parts)
        assert receiver.done.wait(10)
        c = receiver.counters()
    assert (c["received"], c["missing"], c["rejected"], c["malformed"]) == (2, 1, {}, {})


@pytest.mark.parametrize(("compression", "most"), [(None, 1), ("bslz4", 5)])
def test_corrupt_frames_without_a_checksum_are_flagged_as_implausible(
    small_scan: ScanData, compression: str | None, most: int
) -> None:
    """Stream v2 has no checksum: of 34 corrupted frames (4 bytes flipped in each), at most ``most`` are accepted;
    the others fail to decompress or hold counts above the saturation value the start declares (the virtual
    detector declares its readout bit depth). Before the check, 39 of 43 raw and 13 of 43 bslz4 got through."""
    receiver = Receiver(ANY, idle_timeout_s=10).start()
    faults = Faults(corrupt=0.43, seed=4)
    try:
        report = replay(small_scan, receiver.endpoint, kind=Protocol.DECTRIS_V2, compression=compression, faults=faults)
        assert receiver.done.wait(20)
        c, index = receiver.counters(), set(receiver.buffer.drain()[0].tolist())
    finally:
        receiver.close()
    accepted = set(report.corrupted) & index
    assert len(report.corrupted) == 34 and len(accepted) <= most, (sorted(accepted), c["rejected"])
    assert compression or c["rejected"] == {"saturation": 33}
    assert c["received"] == len(index) == small_scan.n_frames - c["frames_rejected"] - c["missing"]


def test_a_source_stopped_before_any_frame_says_so() -> None:
    """Stopping a live scan before its first frame is not a failure: ``StoppedBeforeFrames``, not ``DataError``."""
    with receiving() as (receiver, push):
        push.send_multipart(native.encode_start(START))
        with pytest.raises(StoppedBeforeFrames):
            StreamSource(receiver).first(lambda: True)
        stop = threading.Event()
        threading.Timer(0.3, stop.set).start()
        with pytest.raises(StoppedBeforeFrames):
            StreamSource(receiver).first(stop.is_set)
