"""Transform stages: the probe recentring leaves the model unchanged; the fast-forward jump and its guard (a jump
that raises the data residual is undone, one that lowers it is kept); one schedule spelling runs them the same
way on a file and on a live stream (the one run loop), and the transform's time counts in the run's clock."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from models.unet import UNet, save_fast_forward
from workers import ff_state
from workers.data import ScanData
from workers.engines.registry import make_engine
from workers.metrics import model_intensities
from workers.record import Result
from workers.runtime import Stage, run_schedule, run_stream
from workers.schedule import FastForwardOptions, parse_schedule
from workers.state import ReconState
from workers.stream.detector import replay
from workers.stream.receiver import Receiver
from workers.transforms import fast_forward, recentre_probe

CPU = torch.device("cpu")


def centroid(probe: np.ndarray) -> np.ndarray:
    power = (np.abs(probe) ** 2).reshape(-1, *probe.shape[-2:]).sum(0)
    grid = np.indices(power.shape)
    return np.array([(g * power).sum() for g in grid]) / power.sum()


def off_centre_state(data: ScanData) -> tuple[ReconState, object]:
    """The true object and a probe that vanishes at its window's edges, rolled (5, -4) px off centre,
    with positions moved to match."""
    m = data.frame_size
    r2 = ((np.indices((m, m)) - (m - 1) / 2) ** 2).sum(0) / (0.3 * m) ** 2
    probe = np.roll(data.truth["probe"] * np.exp(-(r2**3)), (5, -4), axis=(-2, -1))
    state = ReconState.initial(probe)
    engine = make_engine("epie", state, data.geometry)
    engine.add_frames(data.intensities, data.truth["positions"] - np.array([5.0, -4.0]))
    h, w = state.object.shape
    obj = data.truth["object"]
    o = state.origin.astype(int)
    state.object[o[0] : o[0] + obj.shape[0], o[1] : o[1] + obj.shape[1]] = torch.from_numpy(obj)[: h - o[0], : w - o[1]]
    return state, engine


def test_recentring_moves_the_probe_and_keeps_the_intensities(small_scan: ScanData) -> None:
    state, engine = off_centre_state(small_scan)
    m = small_scan.frame_size
    before = np.concatenate([i for i, _ in model_intensities(small_scan, *_host(state))])
    assert np.abs(centroid(state.probe.numpy()) - (m - 1) / 2).max() > 3
    recentre_probe(state, engine)
    assert np.abs(centroid(state.probe.numpy()) - (m - 1) / 2).max() <= 1.0
    after = np.concatenate([i for i, _ in model_intensities(small_scan, *_host(state))])
    change = np.linalg.norm(after - before) / np.linalg.norm(before)
    assert change < 1e-3, change


def on_a_file_and_a_stream(data: ScanData, schedule: list[Stage]) -> tuple[Result, Result]:
    """The results of ``schedule`` on ``data`` read at once and replayed over a live stream."""
    offline = run_schedule(data, schedule, device=CPU)
    receiver = Receiver("tcp://127.0.0.1:*", idle_timeout_s=10).start()
    sender = threading.Thread(target=replay, args=(data, receiver.endpoint))
    sender.start()
    try:
        live = run_stream(receiver, schedule, device=CPU)
    finally:
        sender.join()
        receiver.close()
    return offline, live


def _host(state: ReconState) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return state.object.numpy(), state.probe.numpy(), state.positions.numpy()


def test_one_schedule_with_a_transform_runs_on_a_file_and_on_a_stream(small_scan: ScanData) -> None:
    data = small_scan.subset(slice(0, 40))
    schedule = [Stage.from_spec(s) for s in parse_schedule("epie:3,recentre-probe,rpie:3")]
    offline, live = on_a_file_and_a_stream(data, schedule)
    m = data.frame_size
    for result in (offline, live):
        assert result.attrs["engines"] == "epie:3,recentre-probe,rpie:3"
        assert np.isfinite(result.loss).all()
        assert np.abs(centroid(result.state["probe"]) - (m - 1) / 2).max() <= 1.5
    assert len(offline.loss) == 6 and live.attrs["iterations_after_scan"] == 6


def test_host_copies_of_the_state_are_not_views(small_scan: ScanData) -> None:
    state, _ = off_centre_state(small_scan)
    saved = state.to_numpy()
    before = saved["object"].copy(), saved["probe"].copy()
    state.object += 1
    state.probe.mul_(2)
    np.testing.assert_array_equal(saved["object"], before[0])
    np.testing.assert_array_equal(saved["probe"], before[1])


def true_state(data: ScanData, offset: complex = 0j) -> tuple[ReconState, object]:
    """The true probe at the true positions and the true object plus ``offset`` (an ePIE engine holds the frames)."""
    state = ReconState.initial(data.truth["probe"])
    engine = make_engine("epie", state, data.geometry)
    engine.add_frames(data.intensities, data.truth["positions"])
    obj, o = data.truth["object"], state.origin.astype(int)
    h, w = state.object.shape
    state.object[o[0] : o[0] + obj.shape[0], o[1] : o[1] + obj.shape[1]] = torch.from_numpy(obj + offset)[
        : h - o[0], : w - o[1]
    ]
    return state, engine


def constant_jump(path: Path, change: complex) -> Path:
    """Weights of a U-Net whose jump is the constant ``change`` in the normalised object (a head bias only)."""
    net = UNet(levels=4, width=2)
    with torch.no_grad():
        net.head.bias.copy_(torch.tensor([change.real, change.imag]))
    save_fast_forward(net, path, {"test": "constant jump"})
    return path


def test_guard_undoes_a_jump_that_raises_the_residual(tiny_scan: ScanData, tmp_path: Path) -> None:
    state, engine = true_state(tiny_scan)
    before = state.object.clone()
    weights = str(constant_jump(tmp_path / "bad.pt", 0.3 + 0.2j))
    record = json.loads(
        fast_forward(state, engine, FastForwardOptions(weights=weights, tile=32, overlap=8))["fast_forward"]
    )
    assert not record["accepted"]
    assert record["residual_after"] > record["residual_before"]
    torch.testing.assert_close(state.object, before, rtol=0, atol=0)
    unguarded = FastForwardOptions(weights=weights, tile=32, overlap=8, guard=False)
    assert json.loads(fast_forward(state, engine, unguarded)["fast_forward"])["accepted"]
    assert ff_state.data_residual(engine) == pytest.approx(record["residual_after"], rel=1e-5)


def test_guard_keeps_a_jump_that_lowers_the_residual(tiny_scan: ScanData, tmp_path: Path) -> None:
    a = 0.2 - 0.1j
    state, engine = true_state(tiny_scan, offset=a)
    x, c = ff_state.features(state.object, ff_state.illumination(state))
    weights = str(constant_jump(tmp_path / "good.pt", complex(-a / complex(c))))
    record = json.loads(
        fast_forward(state, engine, FastForwardOptions(weights=weights, tile=32, overlap=8))["fast_forward"]
    )
    assert record["accepted"]
    assert record["residual_after"] < 0.1 * record["residual_before"]
    lit = x[2] >= ff_state.LIT
    o = state.origin.astype(int)
    truth = torch.from_numpy(tiny_scan.truth["object"])
    region = lit[o[0] : o[0] + truth.shape[0], o[1] : o[1] + truth.shape[1]]
    jumped = state.object[o[0] : o[0] + truth.shape[0], o[1] : o[1] + truth.shape[1]]
    torch.testing.assert_close(jumped[region], truth[region], rtol=0, atol=1e-5)


def test_features_remove_the_global_phase_and_scale(tiny_scan: ScanData) -> None:
    state, _ = true_state(tiny_scan)
    illum = ff_state.illumination(state)
    x, c = ff_state.features(state.object, illum)
    y, d = ff_state.features(state.object * (0.3 * np.exp(1.1j)), illum)
    torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5)
    assert complex(d / c) == pytest.approx(0.3 * np.exp(1.1j), rel=1e-5)
    assert float(x[2].max()) == pytest.approx(1.0)


def test_fast_forward_stage_on_a_file_and_a_stream_counts_its_time(small_scan: ScanData, tmp_path: Path) -> None:
    data = small_scan.subset(slice(0, 40))
    weights = str(constant_jump(tmp_path / "bad.pt", 0.3))
    schedule = [Stage.from_spec(s) for s in parse_schedule("epie:3,fast-forward,epie:2", {"weights": weights})]
    offline, live = on_a_file_and_a_stream(data, schedule)
    for result in (offline, live):
        assert result.attrs["engines"] == "epie:3,fast-forward,epie:2"
        record = json.loads(result.attrs["fast_forward"])
        assert not record["accepted"] and record["weights"] == weights
        assert np.isfinite(result.loss).all()
    steps = np.diff(offline.time_s)
    seconds = json.loads(offline.attrs["fast_forward"])["seconds"]
    assert steps[2] >= seconds  # the epoch after the jump starts later by the transform's time
    assert len(offline.loss) == 5
