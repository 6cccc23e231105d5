"""Training: the shrinkage start is the denoiser it claims, the tiny recipe runs in seconds, seeded, and writes weights
that load and a manifest that matches."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models.dncnn import DnCNN, load_denoiser
from models.fdsl import SIGMA
from models.train import CONFIGS, _shrinkage_start, dct_filters, denoising_psnr, ptycho_patches, train

QUIET = ["--seed", "5", "--quiet", "--json"]


def test_dct_filters_are_orthonormal_and_zero_mean() -> None:
    flat = dct_filters().flatten(1)
    assert torch.allclose(flat @ flat.T, torch.eye(8), atol=1e-6)
    assert flat.sum(dim=1).abs().max() < 1e-6


def test_shrinkage_start_is_dct_shrinkage_with_unit_layer_norms() -> None:
    net = DnCNN(depth=3, channels=16)  # no middle layers: R is exactly W^T (clip(W x, t) - t)
    _shrinkage_start(net, seed=0, thresholds=(1.0, 2.0))
    assert net.operator_norms(iterations=200) == pytest.approx([1.0] * 3, abs=2e-3)
    x = torch.rand(2, 1, 20, 24, generator=torch.Generator().manual_seed(0))
    weight = dct_filters().repeat_interleave(2, dim=0)[:, None] / (3 * 2**0.5)
    t = torch.tensor([1.0, 2.0] * 8) * SIGMA / (3 * 2**0.5)
    z = F.conv2d(x, weight, padding=1)
    clipped = torch.maximum(torch.minimum(z, t[:, None, None]), -t[:, None, None])
    expected = F.conv_transpose2d(clipped - t[:, None, None], weight, padding=1)
    with torch.no_grad():
        assert torch.allclose(net.residual(x), expected, atol=1e-6)


def test_shrinkage_start_denoises_object_patches() -> None:
    net = DnCNN()
    _shrinkage_start(net, seed=0)
    net.normalise_(iterations=50)
    result = denoising_psnr(net, ptycho_patches(2, 48, seed=4), SIGMA, seed=0)
    assert result["denoised_db"] > result["noisy_db"] + 3.0


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
    assert manifest["data"]["recipe"] == "leaves-on-fields" and "random field" in manifest["data"]["description"]
    for held in ("dead_leaves", "ptycho"):
        before, after = manifest["heldout"][held]["before"], manifest["heldout"][held]["after"]
        assert before["noisy_db"] == pytest.approx(after["noisy_db"])
        assert before["denoised_db"] > before["noisy_db"]  # R starts as DCT shrinkage: it denoises from step 0
        assert after["denoised_db"] > after["noisy_db"]
    assert 0 < manifest["lipschitz"]["measured"] <= 1.0
    net = load_denoiser(tiny / "dncnn.pt")
    assert len(net.layers) == 4 and net.layers[0].out_channels == 8


def test_training_is_seeded(tiny: Path, tmp_path: Path) -> None:
    again = train(CONFIGS["tiny"], tmp_path, seed=5, progress=False)
    assert again["weights"]["sha256"] == json.loads((tiny / "dncnn.json").read_text())["weights"]["sha256"]


def test_cli_trains_on_the_seeds_plain_leaves(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from service.cli import main

    assert main(["train", "denoiser", "--config", "tiny", "--data", "leaves", "--out", str(tmp_path)] + QUIET) == 0
    summary = json.loads(capsys.readouterr().out)
    manifest = json.loads((tmp_path / "dncnn.json").read_text())
    assert (
        summary["data"] == manifest["data"]["recipe"] == "leaves"
        and "random field" not in manifest["data"]["description"]
    )
    assert manifest["weights"]["sha256"] != json.loads((tiny / "dncnn.json").read_text())["weights"]["sha256"]


def test_unknown_recipe_is_refused() -> None:
    with pytest.raises(ValueError, match="recipe 'stripes'"):
        replace(CONFIGS["tiny"], data="stripes")


def test_shrinkage_thresholds_follow_the_training_sigma() -> None:
    nets = {sigma: DnCNN(depth=3, channels=16) for sigma in (SIGMA, 3 * SIGMA)}
    for sigma, net in nets.items():
        _shrinkage_start(net, seed=0, sigma=sigma)
    low, high = (net.layers[0].bias for net in nets.values())
    assert low is not None and high is not None and torch.allclose(high, 3 * low)
    assert torch.equal(nets[SIGMA].layers[0].weight, nets[3 * SIGMA].layers[0].weight)
