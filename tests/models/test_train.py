"""Training: the tiny recipe runs in seconds, seeded, and writes weights that load and a manifest that matches."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from models.dncnn import load_denoiser
from models.train import CONFIGS, train


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny")
    train(CONFIGS["tiny"], out, seed=5, progress=False)
    return out


def test_tiny_training_writes_weights_and_manifest(tiny: Path) -> None:
    manifest = json.loads((tiny / "dncnn.json").read_text())
    weights = (tiny / "dncnn.pt").read_bytes()
    assert manifest["weights"]["sha256"] == hashlib.sha256(weights).hexdigest()
    assert manifest["training"]["steps"] == 3 * 2 and manifest["training"]["device"] == "cpu"
    assert manifest["network"]["depth"] == 4 and manifest["data"]["images"] == 8
    for held in ("dead_leaves", "ptycho"):
        before, after = manifest["heldout"][held]["before"], manifest["heldout"][held]["after"]
        assert before["noisy_db"] == pytest.approx(after["noisy_db"])
        assert before["denoised_db"] > before["noisy_db"]  # R starts as a high-pass: it denoises from step 0
        assert after["denoised_db"] > after["noisy_db"]
    assert 0 < manifest["lipschitz"]["measured"] <= 1.0
    net = load_denoiser(tiny / "dncnn.pt")
    assert len(net.layers) == 4 and net.layers[0].out_channels == 8


def test_training_is_seeded(tiny: Path, tmp_path: Path) -> None:
    again = train(CONFIGS["tiny"], tmp_path, seed=5, progress=False)
    assert again["weights"]["sha256"] == json.loads((tiny / "dncnn.json").read_text())["weights"]["sha256"]
