"""The shipped denoiser (models/weights): its manifest matches the file, it denoises, and its residual R is
1-Lipschitz, measured here independently of the spectral normalisation that made it so.

Tolerance: R's bound is 1 for the operator norms RealSN measured (48 x 48 images, zero padding, power
iteration); on larger images a zero-padded convolution's norm can exceed that by ~0.2% per layer, so 17
layers may reach ~1.035 at worst. The test allows 1.05."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from torch import Tensor

from models.dncnn import WEIGHTS, DnCNN, load_denoiser
from models.fdsl import SIGMA, dataset
from models.train import denoising_psnr, lipschitz, ptycho_patches

TOLERANCE = 0.05
MIN_GAIN_DB = 0.5  # measured on the 16-image held-out sets: +1.9 dB (dead leaves), +5.0 dB (object patches);
# on the two 128 x 128 images below +2.0 and +5.0 dB (at 64 x 64, whose leaves are mostly edges: +0.25 and +5.6)


def difference_quotient_bound(net: DnCNN, x: Tensor, steps: int = 30) -> float:
    """Largest ||R(a) - R(b)|| / ||a - b|| found by gradient ascent on the pair (a, b), starting at x and a small
    random step from it: no Jacobian, no layer norms."""
    a = x.clone().requires_grad_(True)
    b = (x + 1e-2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).requires_grad_(True)
    optimiser = torch.optim.Adam([a, b], lr=2e-3)
    best = 0.0
    for _ in range(steps):
        quotient = (net.residual(a) - net.residual(b)).norm() / (a - b).norm()
        best = max(best, float(quotient.detach()))
        optimiser.zero_grad()
        (-quotient).backward()
        optimiser.step()
    return best


def noisy_images(h: int, w: int) -> Tensor:
    g = torch.Generator().manual_seed(7)
    leaves = torch.from_numpy(dataset(2, 99, size=max(h, w))[:, :h, :w].astype(np.float32) / 255)[:, None]
    clean = torch.cat([torch.rand(1, 1, h, w, generator=g), leaves])
    return clean + SIGMA * torch.randn(clean.shape, generator=g)


@pytest.fixture(scope="module")
def shipped() -> DnCNN:
    net = load_denoiser()
    net.requires_grad_(False)
    return net


def test_manifest_matches_the_shipped_weights() -> None:
    manifest = json.loads(WEIGHTS.with_suffix(".json").read_text())
    assert manifest["weights"]["sha256"] == hashlib.sha256(WEIGHTS.read_bytes()).hexdigest()
    assert manifest["network"]["depth"] == 17 and manifest["network"]["channels"] == 64
    assert manifest["lipschitz"]["measured"] <= 1 + TOLERANCE


def test_estimators_agree_and_see_an_expansive_network() -> None:
    torch.manual_seed(0)
    net = DnCNN(depth=3, channels=8)
    with torch.no_grad():
        for conv in net.layers:
            conv.weight.mul_(4.0)
    net.requires_grad_(False)
    x = noisy_images(24, 32)[:1]
    jacobian, quotient = lipschitz(net, x), difference_quotient_bound(net, x[0][None])
    assert jacobian > 1.5 and quotient > 1.5
    assert quotient == pytest.approx(jacobian, rel=0.2)


def test_shipped_residual_is_nonexpansive(shipped: DnCNN) -> None:
    images = noisy_images(36, 52)  # neither the training patch (40) nor the RealSN image (48)
    assert lipschitz(shipped, images, iterations=20) <= 1 + TOLERANCE
    for x in images:
        assert difference_quotient_bound(shipped, x[None]) <= 1 + TOLERANCE


def test_shipped_denoiser_gains_psnr(shipped: DnCNN) -> None:
    leaves = torch.from_numpy(dataset(2, 12345, size=128).astype(np.float32) / 255)[:, None]
    for clean in (leaves, ptycho_patches(2, 128, seed=12345)):
        result = denoising_psnr(shipped, clean, SIGMA, seed=3)
        assert result["denoised_db"] > result["noisy_db"] + MIN_GAIN_DB
