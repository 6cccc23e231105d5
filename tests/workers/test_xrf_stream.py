"""Fluorescence counts on the wire: the native frame header's ``xrf`` field, decoded, carried to joint-xrf live."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from workers.data import ScanData
from workers.previews import Preview, PreviewPublisher
from workers.record import Hooks
from workers.runtime import Stage, run_stream
from workers.schedule import parse_schedule
from workers.simulate import simulate
from workers.stream.detector import replay
from workers.stream.formats import decode, native
from workers.stream.protocol import CorruptFrame, FrameBatch
from workers.stream.receiver import Receiver


@pytest.fixture(scope="module")
def scan() -> ScanData:
    return simulate(probe_size=32, n_positions=25, overlap=0.5, photons=1e6, scan="raster", xrf=("Fe", "Zn"), seed=3)


def test_native_header_round_trip() -> None:
    frame = np.arange(16, dtype=np.uint16).reshape(4, 4)
    msg = decode(native.encode_frame("s", 3, frame, [0.0, 1e-6, 0.0], fluorescence={"Fe": 12.0, "Zn": 0.5}))
    assert msg.fluorescence == {"Fe": 12.0, "Zn": 0.5}  # type: ignore[union-attr]
    plain = decode(native.encode_frame("s", 4, frame, None))
    assert plain.fluorescence is None  # type: ignore[union-attr]
    batch = decode(native.encode_frames("s", [0, 1], [frame, frame], None, [{"Fe": 1.0}, {"Fe": -1.0}]))
    assert isinstance(batch, FrameBatch)
    assert [f.fluorescence for f in batch.frames] == [{"Fe": 1.0}]
    assert batch.corrupt[0].index == 1 and "xrf" in str(batch.corrupt[0])


@pytest.mark.parametrize("bad", [{"Qq": 1.0}, {"Fe": float("nan")}, {"Fe": -2}, {}, [1.0]])
def test_bad_counts_reject_the_frame(bad: object) -> None:
    frame = np.zeros((4, 4), np.uint16)
    parts = native.encode_frame("s", 7, frame, None)
    head = native.orjson.loads(bytes(parts[0])) | {"xrf": bad}
    with pytest.raises(CorruptFrame, match="xrf"):
        decode([native.orjson.dumps(head), parts[1]])


@pytest.mark.parametrize("batch", [1, 4])
def test_a_live_scan_with_counts_reconstructs_jointly(scan: ScanData, batch: int) -> None:
    """replay sends the counts in native headers; the stream's engine gets them in chunks; the previews and
    the result hold both element maps."""
    torch.set_num_threads(1)
    schedule = [Stage.from_spec(s) for s in parse_schedule("joint-xrf:5")]
    receiver = Receiver("tcp://127.0.0.1:*", idle_timeout_s=10).start()
    sender = threading.Thread(target=replay, args=(scan, receiver.endpoint), kwargs={"batch": batch})
    sender.start()
    try:
        previews: list[Preview] = []
        publisher = PreviewPublisher(previews.append, interval_s=0.0)
        hooks = Hooks(previews=publisher)
        live = run_stream(receiver, schedule, device=torch.device("cpu"), warmup_frames=8, hooks=hooks)
        publisher.close()
        counts = receiver.fluorescence(range(25))
    finally:
        sender.join()
        receiver.close()
    assert [c["Zn"] for c in counts] == pytest.approx(scan.fluorescence.counts[1])  # type: ignore[index, union-attr]
    assert sorted(k for k in live.state if k.startswith("elements/")) == ["elements/Fe", "elements/Zn"]
    assert live.attrs["xrf_elements"] == "Fe,Zn" and live.attrs["frames_used"] == 25
    assert np.isfinite(live.loss).all()
    assert previews and sorted(previews[-1].elements) == ["Fe", "Zn"]
