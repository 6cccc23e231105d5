"""Fast-forward training data and training (seed 003): recipes are seeded, shards resume, the pairs share one array,
the tiny recipe trains in seconds through the CLI and the Prefect flow, and the manifest matches the weights."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from models.ff_data import DataConfig, load_pairs, network_arrays, recipe, write_shard
from models.ff_train import CONFIGS, HELDOUT_SEED_OFFSET
from models.unet import load_fast_forward
from service.cli import main
from workers import ff_state

TINY = CONFIGS["tiny"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ff")
    assert main(["train", "fast-forward", "--config", "tiny", "--out", str(out), "--seed", "3", "--quiet"]) == 0
    return out


def test_recipes_are_seeded_and_cover_the_issue_ranges() -> None:
    config = CONFIGS["small"].data
    specs = [recipe(config, 0, i) for i in range(200)]
    assert specs[7] == recipe(config, 0, 7) and specs[7] != recipe(config, 1, 7)
    photons = [s["photons"] for s in specs]
    overlaps = [s["overlap"] for s in specs]
    assert 1e4 <= min(photons) < 1e5 and 1e6 < max(photons) <= 1e7
    assert 0.5 <= min(overlaps) < 0.55 and 0.75 < max(overlaps) <= 0.8
    kinds = {s["probe_kind"] for s in specs}
    assert {"near", "focused", "structured", "zone-plate-25"} <= kinds
    assert all(s["near_field"] == (s["probe_kind"] == "near") for s in specs)


def test_shards_hold_aligned_pairs_and_resume(tmp_path: Path) -> None:
    config = DataConfig(scans=2, per_shard=2, probe_sizes=(16,), positions=(16, 16), warmup=3, converge_iterations=6)
    path = write_shard(tmp_path, 0, config, seed=4)
    stamp = path.stat().st_mtime_ns
    assert write_shard(tmp_path, 0, config, seed=4).stat().st_mtime_ns == stamp  # kept, not redone
    with pytest.raises(ValueError, match="another recipe or seed"):
        write_shard(tmp_path, 0, config, seed=5)
    pairs = load_pairs(tmp_path)
    assert [p["recipe"]["index"] for p in pairs] == [0, 1]
    for pair in pairs:
        assert pair["warm"].shape == pair["converged"].shape == pair["illumination"].shape
        assert pair["residual_converged"] < pair["residual_warm"]
        x, y = network_arrays(pair)
        assert x.shape == (3, *pair["warm"].shape) and y.shape == (2, *pair["warm"].shape)
        lit = x[2] > 0.1
        assert float((y - x[:2])[:, lit].abs().max()) > 0  # the converged object differs where lit
        assert float(x[2].min()) == 0  # the unscanned border is part of the array
    with h5py.File(path) as f:
        assert json.loads(f.attrs["config"])["warmup"] == 3


def test_tiny_training_writes_weights_and_manifest(tiny: Path) -> None:
    manifest = json.loads((tiny / "fast_forward.json").read_text())
    weights = (tiny / "fast_forward.pt").read_bytes()
    assert manifest["weights"]["sha256"] == hashlib.sha256(weights).hexdigest()
    assert manifest["training"]["steps"] == TINY.steps and manifest["training"]["device"] == "cpu"
    assert manifest["network"]["levels"] == 4 and manifest["network"]["width"] == TINY.width
    assert manifest["data"]["heldout"]["seed"] == 3 + HELDOUT_SEED_OFFSET
    assert manifest["data"]["train"]["scans_found"] == TINY.data.scans
    held = manifest["heldout"]
    assert len(held["scans"]) == TINY.heldout.scans
    for row in held["scans"]:
        assert np.isfinite([row["distance_warm"], row["distance_jumped"], row["residual_jumped"]]).all()
        assert row["accepted"] == (row["residual_jumped"] <= row["residual_warm"])
    net = load_fast_forward(tiny / "fast_forward.pt")
    assert net.width == TINY.width and net.multiple == 16
    assert sorted(p.name for p in (tiny / "data").iterdir()) == ["heldout", "train"]


def test_training_is_seeded_and_reuses_the_shards(tiny: Path, tmp_path: Path) -> None:
    from models.ff_train import train

    again = train(TINY, tmp_path, data_dir=tiny / "data", seed=3, progress=False)
    assert again["weights"]["sha256"] == json.loads((tiny / "fast_forward.json").read_text())["weights"]["sha256"]
    assert again["data"]["generation_s"]["train"] < 1.0  # every shard existed


def test_held_out_jump_uses_the_stage_path(tiny: Path) -> None:
    """The manifest's held-out residuals are those the stage's guard would see: recomputed here from the shard."""
    manifest = json.loads((tiny / "fast_forward.json").read_text())
    pair = load_pairs(tiny / "data" / "heldout")[0]
    x, c = ff_state.features(torch.from_numpy(pair["warm"]), torch.from_numpy(pair["illumination"]))
    assert complex(c) != 0 and float(x[2].max()) == pytest.approx(1.0)
    assert manifest["heldout"]["scans"][0]["residual_warm"] == pytest.approx(float(pair["residual_warm"]), rel=1e-4)


@pytest.fixture(scope="module")
def prefect() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


def test_train_fast_forward_flow(prefect: None, tiny: Path, tmp_path: Path) -> None:
    from flows.train_fast_forward import train_fast_forward

    state = train_fast_forward(
        config="tiny", out=str(tmp_path), data_dir=str(tiny / "data"), seed=3, progress=False, return_state=True
    )
    assert state.is_completed()
    manifest = state.result()
    assert manifest == json.loads((tmp_path / "fast_forward.json").read_text())
    assert manifest["weights"]["sha256"] == json.loads((tiny / "fast_forward.json").read_text())["weights"]["sha256"]
    with pytest.raises(ValueError, match="unknown fast-forward config 'huge'"):
        train_fast_forward(config="huge", out=str(tmp_path))
