"""The worker during a live scan: streamed vs offline quality, previews, accounting, cancel, checkpoint, CLI."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from service.cli import main
from workers.data import ScanData
from workers.io import write_cxi
from workers.job import JobSpec
from workers.metrics import truth_metrics
from workers.previews import Preview, PreviewPublisher
from workers.runtime import Hooks, Progress, Stage, run_job, run_schedule, run_stream
from workers.stream.detector import replay
from workers.stream.receiver import Receiver

ANY = "tcp://127.0.0.1:*"
CPU = torch.device("cpu")


def crms(obj: np.ndarray, origin: np.ndarray, data: ScanData) -> float:
    return truth_metrics(obj, origin, data.truth)["crms"]


def test_streamed_reconstruction_is_as_good_as_offline(small_scan: ScanData) -> None:
    schedule = [Stage.parse("epie", 20)]
    offline = run_schedule(small_scan, schedule, device=CPU)
    previews: list[Preview] = []
    receiver = Receiver(ANY, idle_timeout_s=10).start()
    sender = threading.Thread(target=replay, args=(small_scan, receiver.endpoint), kwargs={"rate_hz": 500})
    sender.start()
    try:
        publisher = PreviewPublisher(previews.append, interval_s=0.3)
        live = run_stream(receiver, schedule, device=CPU, hooks=Hooks(previews=publisher))
        publisher.close()
    finally:
        sender.join()
        receiver.close()
    n = small_scan.n_frames
    assert (live.attrs["frames_received"], live.attrs["frames_rejected"], live.attrs["frames_missing"]) == (n, 0, 0)
    assert live.attrs["iterations_after_scan"] == 20 and live.attrs["iterations"] > 20
    np.testing.assert_array_equal(live.attrs["frame_index"], np.arange(n))
    a, b = (
        crms(offline.state["object"], offline.state["origin"], small_scan),
        crms(live.state["object"], live.state["origin"], small_scan),
    )
    assert b <= 1.1 * a, (a, b)
    complete = [p for p in previews if p.frames_used == n]
    assert complete and all({"amplitude", "phase", "probe", "probe_farfield"} <= set(p.png) for p in complete)
    assert complete[0].png["amplitude"].startswith(b"\x89PNG")


def test_stream_job_stops_on_cancel_and_resumes_from_its_checkpoint(small_scan: ScanData, tmp_path: Path) -> None:
    data = small_scan.subset(slice(0, 40))
    spec = {
        "input": {"stream": ANY, "idle_timeout_s": 10},
        "schedule": [{"engine": "epie", "iterations": 4}, {"engine": "rpie", "iterations": 4}],
        "device": "cpu",
        "output": str(tmp_path / "out.h5"),
        "checkpoint": str(tmp_path / "ckpt.npz"),
    }
    job = JobSpec.model_validate(spec)
    cancel = threading.Event()
    senders: list[threading.Thread] = []

    def listening(receiver: Receiver) -> None:
        senders.append(threading.Thread(target=replay, args=(data, receiver.endpoint)))
        senders[-1].start()

    after: list[Progress] = []

    def progress(p: Progress) -> None:
        if not p.streaming:
            after.append(p)
            if len(after) == 3:
                cancel.set()

    first = run_job(job, on_progress=progress, cancel=cancel, on_listening=listening)
    for s in senders:
        s.join()
    assert first.attrs["stopped"] and first.attrs["iterations_after_scan"] == 3
    assert (tmp_path / "ckpt.npz").exists() and (tmp_path / "out.h5").exists()
    second = run_job(job)  # the checkpoint exists: resume, no stream needed
    assert not second.attrs["stopped"] and second.attrs["complete"]
    assert second.attrs["iterations"] == first.attrs["iterations"] + 5 == len(second.loss) == len(first.loss) + 5
    assert second.attrs["frames_received"] == 40 and second.attrs["input_stream"]
    with h5py.File(tmp_path / "out.h5") as f:
        assert f["positions"].shape == (40, 2) and f.attrs["resumed_from"] == str(tmp_path / "ckpt.npz")


def test_worker_cli_runs_a_file_job(small_scan: ScanData, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = small_scan.subset(slice(0, 30))
    write_cxi(tmp_path / "scan.cxi", data, small_scan.truth)
    job = {
        "input": {"file": str(tmp_path / "scan.cxi")},
        "schedule": [{"engine": "epie", "iterations": 2}],
        "device": "cpu",
        "output": str(tmp_path / "out.h5"),
    }
    (tmp_path / "job.json").write_text(json.dumps(job))
    assert main(["worker", str(tmp_path / "job.json"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["iterations"] == 2 and (tmp_path / "out.h5").exists()


def test_replay_cli_feeds_a_receiver(small_scan: ScanData, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_cxi(tmp_path / "scan.cxi", small_scan.subset(slice(0, 25)), small_scan.truth)
    receiver = Receiver(ANY, idle_timeout_s=10).start()
    try:
        argv = ["replay", str(tmp_path / "scan.cxi"), "--to", receiver.endpoint, "--protocol", "dectris-v2"]
        assert main([*argv, "--compression", "bslz4", "--drop", "0.2", "--fault-seed", "1", "--json"]) == 0
        assert receiver.done.wait(10)
        c = receiver.counters()
    finally:
        receiver.close()
    sent = json.loads(capsys.readouterr().out)
    assert c["received"] == sent["frames_sent"] == 25 - sent["dropped"] and c["missing"] == sent["dropped"] > 0


def test_reconstruct_needs_exactly_one_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["reconstruct", "-o", str(tmp_path / "o.h5"), "--engine", "epie"]) == 2
    assert "exactly one of" in capsys.readouterr().err
    argv = ["reconstruct", "x.cxi", "--listen", "tcp://127.0.0.1:1", "-o", "o.h5", "--engine", "epie"]
    assert main(argv) == 2


def test_reconstruct_listen_crops_frames(small_scan: ScanData, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``reconstruct --listen --crop``: the live scan is reconstructed at the cropped size."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"tcp://127.0.0.1:{port}"
    data = small_scan.subset(slice(0, 30))
    sender = threading.Thread(target=replay, args=(data, endpoint), kwargs={"rate_hz": 300})
    sender.start()
    out = tmp_path / "live.h5"
    argv = ["reconstruct", "--listen", endpoint, "-o", str(out), "--engine", "epie", "--iterations-after-scan", "2"]
    try:
        assert main([*argv, "--crop", "48", "--idle-timeout", "10", "--quiet", "--json"]) == 0
    finally:
        sender.join()
    summary = json.loads(capsys.readouterr().out)
    assert summary["frames_received"] == 30 and summary["frames_missing"] == 0
    with h5py.File(out) as f:
        assert f["probe"].shape[-2:] == (48, 48)


def test_a_failing_file_job_keeps_its_partial_result_and_resumes(small_scan: ScanData, tmp_path: Path) -> None:
    """An error mid-run (here raised by a progress hook) saves the partial result and the checkpoint before it
    propagates; running the job again resumes from the checkpoint and completes the schedule."""
    write_cxi(tmp_path / "scan.cxi", small_scan.subset(slice(0, 30)), small_scan.truth)
    job = JobSpec.model_validate(
        {
            "input": {"file": str(tmp_path / "scan.cxi")},
            "schedule": [{"engine": "epie", "iterations": 4}, {"engine": "rpie", "iterations": 4}],
            "device": "cpu",
            "output": str(tmp_path / "out.h5"),
            "checkpoint": str(tmp_path / "ckpt.npz"),
            "save_interval_s": 1000,
        }
    )

    def crash(p: Progress) -> None:
        if p.iteration == 5:
            raise RuntimeError("device lost")

    with pytest.raises(RuntimeError, match="device lost"):
        run_job(job, on_progress=crash)
    with h5py.File(tmp_path / "out.h5") as f:
        assert not f.attrs["complete"] and "device lost" in f.attrs["failed"] and len(f["history/loss"]) == 5
        partial = f["object"][()]
    resumed = run_job(job)
    assert resumed.attrs["complete"] and resumed.attrs["iterations"] == 8 and len(resumed.loss) == 8
    assert resumed.attrs["resumed_from"] == str(tmp_path / "ckpt.npz") and "failed" not in resumed.attrs
    assert not np.array_equal(resumed.state["object"], partial)


def test_a_running_file_job_saves_periodically(small_scan: ScanData, tmp_path: Path) -> None:
    """With a short save interval the checkpoint and the partial result exist while the job still runs."""
    write_cxi(tmp_path / "scan.cxi", small_scan.subset(slice(0, 20)), small_scan.truth)
    job = JobSpec.model_validate(
        {
            "input": {"file": str(tmp_path / "scan.cxi")},
            "schedule": [{"engine": "epie", "iterations": 6}],
            "device": "cpu",
            "output": str(tmp_path / "out.h5"),
            "checkpoint": str(tmp_path / "ckpt.npz"),
            "save_interval_s": 1e-6,
        }
    )
    seen: list[tuple[bool, int]] = []

    def look(p: Progress) -> None:
        if p.iteration == 3:
            with h5py.File(tmp_path / "out.h5") as f:
                seen.append((bool(f.attrs["complete"]), len(f["history/loss"])))

    result = run_job(job, on_progress=look)
    assert seen == [(False, 2)], "the save after epoch 2 is there while epoch 3 reports"
    assert result.attrs["complete"] and (tmp_path / "ckpt.npz").exists()


def test_measured_near_field_scan_streams_with_its_mask(shared_data: str) -> None:
    """The PETRA III P25 near-field scan (real data, with its detector mask) replayed as a live stream: every
    frame accounted, the mask and the near-field geometry reach the engine, and the data error after the scan
    matches an offline run of the same schedule."""
    from workers.io import load_scan

    data = load_scan(f"{shared_data}/petra_p25_nearfield.cxi", near_field=True, focus_distance=3.65e-3)
    assert data.mask is not None and not data.mask.all()
    schedule = [Stage.parse("rpie", 8)]
    offline = run_schedule(data, schedule, device=CPU)
    receiver = Receiver(ANY, idle_timeout_s=20).start()
    sender = threading.Thread(target=replay, args=(data, receiver.endpoint))
    sender.start()
    try:
        live = run_stream(receiver, schedule, device=CPU)
        scan = receiver.scan()
    finally:
        sender.join()
        receiver.close()
    assert (live.attrs["frames_received"], live.attrs["frames_rejected"], live.attrs["frames_missing"]) == (200, 0, 0)
    assert scan is not None and scan.geometry.kind == "near"
    np.testing.assert_array_equal(scan.mask, data.mask)
    assert scan.geometry.pixel_size == pytest.approx(data.geometry.pixel_size, rel=1e-6)
    assert live.loss[-1] <= 1.1 * offline.loss[-1], (live.loss[-1], offline.loss[-1])
