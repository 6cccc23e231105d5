"""The shipped fast-forward weights: the manifest describes them, they load as the stage loads them, and a schedule
with the stage and the default weights runs end to end with the guard's record in the result."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from models.unet import WEIGHTS, apply_tiled, load_fast_forward
from workers import ff_state
from workers.runtime import Stage, run_schedule
from workers.schedule import parse_schedule
from workers.simulate import simulate

MANIFEST = WEIGHTS.with_suffix(".json")


def test_manifest_matches_the_shipped_weights() -> None:
    manifest = json.loads(MANIFEST.read_text())
    data = WEIGHTS.read_bytes()
    assert manifest["weights"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["weights"]["bytes"] == len(data) < 8_000_000
    net = load_fast_forward()
    assert net.levels == manifest["network"]["levels"] == 4
    assert sum(p.numel() for p in net.parameters()) == manifest["network"]["parameters"]
    assert manifest["training"]["name"] == "small"
    assert len(manifest["heldout"]["scans"]) == manifest["data"]["heldout"]["scans"]


def test_default_weights_run_in_a_schedule_and_the_guard_keeps_the_residual() -> None:
    data = simulate(probe_size=32, n_positions=49, overlap=0.7, photons=1e5, seed=321)
    schedule = [Stage.from_spec(s) for s in parse_schedule("epie:10,fast-forward,epie:2")]
    result = run_schedule(data, schedule, device=torch.device("cpu"))
    record = json.loads(result.attrs["fast_forward"])
    assert record["weights"] == str(WEIGHTS)
    assert record["accepted"] == (record["residual_after"] <= record["residual_before"])
    assert np.isfinite(result.state["object"]).all()
    assert result.loss.shape == (12,)
    assert result.time_s[10] - result.time_s[9] >= record["seconds"]


@pytest.mark.parametrize("size", [(40, 200), (150, 90)])
def test_shipped_network_takes_any_object_size(size: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    obj = torch.from_numpy(
        (1 + 0.1 * rng.standard_normal(size) + 0.1j * rng.standard_normal(size)).astype(np.complex64)
    )
    illum = torch.ones(size)
    x, c = ff_state.features(obj, illum)
    net = load_fast_forward()
    change = apply_tiled(net, x, net.multiple, tile=64, overlap=16)
    assert change.shape == (2, *size) and torch.isfinite(change).all()
