"""PIE-family and Adam engines: registry, options, convergence, streaming in chunks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from workers.data import ScanData
from workers.engines.base import Engine
from workers.engines.options import OPTIONS, EngineName
from workers.engines.registry import ENGINES, make_engine
from workers.metrics import truth_metrics
from workers.probe_start import initial_probe
from workers.state import ReconState

FIRST_ORDER = ["epie", "rpie", "adam"]


def build(data: ScanData, name: str, options: dict | None = None, probe: np.ndarray | None = None) -> Engine:
    state = ReconState.initial(initial_probe(data)[0] if probe is None else probe)
    return make_engine(name, state, data.geometry, options or {}, mask=data.mask, seed=0)


def test_every_engine_name_has_an_engine_and_options() -> None:
    for name in EngineName:
        assert name in ENGINES, name
        assert name in OPTIONS, name
        assert ENGINES[name].options_model is OPTIONS[name]
        assert ENGINES[name].name == name


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("epie", {"alpah": 1.0}),
        ("epie", {"alpha": 0}),
        ("rpie", {"alpha": 1.5}),
        ("adam", {"lr": -1}),
        ("epie", {"batch_size": 0}),
        ("epie", {"order": "sideways"}),
    ],
)
def test_bad_options_refused(tiny_scan: ScanData, name: str, options: dict) -> None:
    with pytest.raises(ValidationError):
        build(tiny_scan, name, options)


@pytest.mark.parametrize("name", FIRST_ORDER)
def test_engine_reduces_data_error(tiny_scan: ScanData, name: str) -> None:
    engine = build(tiny_scan, name)
    engine.add_frames(tiny_scan.intensities, tiny_scan.positions)
    losses = engine.iterate(15)
    assert losses[-1] < 0.3 * losses[0], losses
    assert len(engine.time_history) == 15 and np.all(np.diff(engine.time_history) > 0)
    snap = engine.snapshot()
    assert snap["object"].dtype == np.complex64 and snap["loss"].shape == (15,)


@pytest.mark.parametrize("batch_size", [1, 8])
def test_epie_known_probe_recovers_object(small_scan: ScanData, batch_size: int) -> None:
    engine = build(
        small_scan, "epie", {"update_probe": False, "batch_size": batch_size}, probe=small_scan.truth["probe"]
    )
    engine.add_frames(small_scan.intensities, small_scan.positions)
    engine.iterate(40)
    snap = engine.snapshot()
    assert np.array_equal(snap["probe"], small_scan.truth["probe"]), "probe must stay fixed"
    assert truth_metrics(snap["object"], snap["origin"], small_scan.truth)["crms"] < 0.12


def test_rpie_with_unit_weights_is_epie(tiny_scan: ScanData) -> None:
    """ePIE and rPIE are one update with different step weights: rPIE(alpha=beta=1) == ePIE(1, 1)."""
    results = []
    for name in ("epie", "rpie"):
        engine = build(tiny_scan, name, {"alpha": 1.0, "beta": 1.0})
        engine.add_frames(tiny_scan.intensities, tiny_scan.positions)
        engine.iterate(3)
        results.append(engine.snapshot())
    assert np.allclose(results[0]["object"], results[1]["object"], atol=1e-5)
    assert np.allclose(results[0]["probe"], results[1]["probe"], atol=1e-5 * np.abs(results[0]["probe"]).max())


def test_mixed_state_probe_modes_stay_orthogonal(tiny_scan: ScanData) -> None:
    engine = build(tiny_scan, "rpie", probe=initial_probe(tiny_scan, n_modes=3)[0])
    engine.add_frames(tiny_scan.intensities, tiny_scan.positions)
    losses = engine.iterate(10)
    assert losses[-1] < losses[0]
    flat = engine.state.probe.reshape(3, -1)
    gram = (flat.conj() @ flat.T).abs()
    off = gram - torch.diag(torch.diagonal(gram))
    assert float(off.max()) < 1e-3 * float(gram.max())
    power = torch.diagonal(gram)
    assert bool((power[:-1] >= power[1:]).all()), "modes sorted strongest first"


@pytest.mark.parametrize("name", ["epie", "rpie"])
def test_streaming_in_chunks_ends_as_good_as_at_once(small_scan: ScanData, name: str) -> None:
    """Frames fed in 4 chunks (iterating during the "scan", the object growing), then as many epochs
    as offline after the last frame, end as good as all frames fed at once."""
    order = np.argsort(np.linalg.norm(small_scan.positions - small_scan.positions.mean(0), axis=1))
    data = small_scan.subset(order)
    data.truth = small_scan.truth
    offline = build(data, name)
    offline.add_frames(data.intensities, data.positions)
    offline.iterate(40)

    live = build(data, name, {"order": "newest-first"})
    for chunk in np.array_split(np.arange(data.n_frames), 4):
        live.add_frames(data.intensities[chunk], data.positions[chunk])
        live.iterate(5)
    live.options.order = "random"
    live.iterate(40)
    assert live.n_frames == data.n_frames
    assert live.state.object.shape[0] > 64
    err = [truth_metrics(e.state.object.numpy(), e.state.origin, data.truth)["crms"] for e in (offline, live)]
    assert err[1] <= 1.15 * err[0] + 0.01, err
    assert live.loss_history[-1] <= 1.15 * offline.loss_history[-1], (live.loss_history[-1], offline.loss_history[-1])


def test_add_frames_refuses_wrong_shapes(tiny_scan: ScanData) -> None:
    from workers.errors import DataError

    engine = build(tiny_scan, "epie")
    with pytest.raises(DataError, match="frames: expected shape"):
        engine.add_frames(np.ones((2, 8, 8), np.float32), np.zeros((2, 2)))
    with pytest.raises(DataError, match="positions: expected shape"):
        engine.add_frames(tiny_scan.intensities[:2], np.zeros((3, 2)))
    with pytest.raises(DataError, match="no frames"):
        engine.iterate(1)


def test_adam_keeps_its_moments_when_the_object_grows(small_scan: ScanData) -> None:
    engine = build(small_scan, "adam")
    half = small_scan.n_frames // 2
    far = np.argsort(small_scan.positions[:, 0])
    engine.add_frames(small_scan.intensities[far[half:]], small_scan.positions[far[half:]])
    engine.iterate(3)
    old, origin = engine._opt, engine.state.origin.copy()
    moments = old.state[old.param_groups[0]["params"][0]]["exp_avg_sq"].clone()
    engine.add_frames(small_scan.intensities[far[:half]], small_scan.positions[far[:half]])
    engine.iterate(1)
    new = engine._opt
    assert new is not old and engine.state.object.shape[0] > moments.shape[0]
    grown = new.state[engine.state.object]["exp_avg_sq"]
    assert int(new.state[engine.state.object]["step"]) == 3 * 2 + 4, "50 frames: 2 steps/epoch; 100: 4"
    r, c = (engine.state.origin - origin).astype(int)
    assert r > 0, "the object grew upwards"
    region = grown[r : r + moments.shape[0], c : c + moments.shape[1]]
    assert float(region.abs().sum()) > 0.5 * float(moments.abs().sum()), "old moments sit where their pixels moved"


def test_masked_pixels_are_ignored(small_scan: ScanData) -> None:
    """Garbage in an off-centre block and a column of the detector: masked out, the object is recovered as
    from clean data (the mask is in file layout, zero frequency at the centre, like the frames)."""
    valid = np.ones((64, 64), bool)
    valid[40:52, 6:16] = False
    valid[:, 50] = False
    corrupted = small_scan.intensities.copy()
    corrupted[:, ~valid] = 1e7
    errors = []
    for mask in (valid, None):
        data = ScanData(corrupted, small_scan.positions, small_scan.geometry, mask, None, "masked")
        engine = build(data, "epie", {"update_probe": False, "batch_size": 8}, probe=small_scan.truth["probe"])
        engine.add_frames(data.intensities, data.positions)
        engine.iterate(30)
        errors.append(truth_metrics(engine.state.object.numpy(), engine.state.origin, small_scan.truth)["crms"])
    assert errors[0] < 0.12 < errors[1], errors
