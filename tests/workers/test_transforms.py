"""Transform stages: the probe recentring leaves the model unchanged, and one schedule spelling runs it
the same way on a file and on a live stream (the one run loop)."""

from __future__ import annotations

import threading

import numpy as np
import torch

from workers.data import ScanData
from workers.engines.registry import make_engine
from workers.metrics import model_intensities
from workers.runtime import Stage, run_schedule, run_stream
from workers.schedule import parse_schedule
from workers.state import ReconState
from workers.stream.detector import replay
from workers.stream.receiver import Receiver
from workers.transforms import recentre_probe

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


def _host(state: ReconState) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return state.object.numpy(), state.probe.numpy(), state.positions.numpy()


def test_one_schedule_with_a_transform_runs_on_a_file_and_on_a_stream(small_scan: ScanData) -> None:
    data = small_scan.subset(slice(0, 40))
    schedule = [Stage.from_spec(s) for s in parse_schedule("epie:3,recentre-probe,rpie:3")]
    offline = run_schedule(data, schedule, device=CPU)
    receiver = Receiver("tcp://127.0.0.1:*", idle_timeout_s=10).start()
    sender = threading.Thread(target=replay, args=(data, receiver.endpoint))
    sender.start()
    try:
        live = run_stream(receiver, schedule, device=CPU)
    finally:
        sender.join()
        receiver.close()
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
