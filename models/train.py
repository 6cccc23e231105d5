"""Training the nonexpansive DnCNN on dead-leaves images (seed 001): seeded, Adam, RealSN after every step,
held-out PSNR before and after, the trained residual's Lipschitz constant measured; weights and a manifest out."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from models.dncnn import SN_SIZE, DnCNN
from models.fdsl import FIELD_SCALES, FIELD_WEIGHTS, SIGMA, check_recipe, dataset
from models.manifest import environment, weights_record


@dataclass(frozen=True)
class TrainConfig:
    """A training recipe: ``images`` dead-leaves images (half DL-Diverse, half DL-Textured) of ``image_size``,
    blended with smooth random fields where ``data`` is "leaves-on-fields" (``models.fdsl``); each epoch takes
    one random ``patch`` x ``patch`` crop of every image (the whole image where patch equals image_size), in
    batches of ``batch``, with fresh noise of ``sigma``."""

    name: str
    images: int
    image_size: int
    patch: int
    batch: int
    epochs: int
    depth: int = 17
    channels: int = 64
    lr: float = 1e-5
    adam_eps: float = 1e-2
    sigma: float = SIGMA
    heldout: int = 16  # held-out dead-leaves images (another seed), and as many ptychographic-object patches
    data: str = "leaves"  # one of models.fdsl.RECIPES

    def __post_init__(self) -> None:
        check_recipe(self.data)


CONFIGS = {
    # seconds on a CPU: a small network, for the tests
    "tiny": TrainConfig(
        "tiny",
        images=8,
        image_size=32,
        patch=24,
        batch=4,
        epochs=3,
        depth=4,
        channels=8,
        heldout=2,
        data="leaves-on-fields",
    ),
    # the shipped weights: the full network on 40 x 40 crops of leaves on fields, 950 steps, 11 min of training and
    # 1.3 min of data on one CPU core (on the seed's plain leaves the same recipe gives 1.4 dB less on object patches)
    "small": TrainConfig("small", images=300, image_size=128, patch=40, batch=16, epochs=50, data="leaves-on-fields"),
    # the seed's recipe: 1,000 whole 128 x 128 images, 50 epochs (for a GPU)
    "full": TrainConfig("full", images=1000, image_size=128, patch=128, batch=16, epochs=50),
}


def config_for(name: str, data: str | None = None) -> TrainConfig:
    """The recipe ``CONFIGS[name]``, its training images replaced by ``data`` where given; unknown names refused."""
    if name not in CONFIGS:
        raise ValueError(f"unknown denoiser config {name!r}: use one of {', '.join(CONFIGS)}")
    return CONFIGS[name] if data is None else replace(CONFIGS[name], data=data)


SHRINK_THRESHOLDS = (1.0, 1.5)  # the shrinkage start's thresholds in units of the noise sigma
LIPSCHITZ_SIZE = (56, 72)  # the measuring images' size: neither a training patch nor the RealSN image


def psnr(estimate: Tensor, truth: Tensor) -> float:
    """Mean over the batch of each image's PSNR (peak 1) in dB."""
    mse = ((estimate - truth) ** 2).flatten(1).mean(dim=1)
    return float((-10 * torch.log10(mse)).mean())


def ptycho_patches(n: int, size: int, seed: int) -> Tensor:
    """n patches (n, 1, size, size) of simulated ptychographic objects (``workers.simulate.make_object``), the
    real and imaginary parts in turn, each min-max scaled to [0, 1] over its whole object, as PINE feeds them."""
    from workers.simulate import make_object

    rng = np.random.default_rng(seed)
    patches = []
    for _ in range(math.ceil(n / 2)):
        obj = make_object((2 * size, 2 * size), rng)
        y, x = rng.integers(0, size + 1, size=2)
        for part in (obj.real, obj.imag):
            part = (part - part.min()) / (np.ptp(part) + 1e-12)
            patches.append(part[y : y + size, x : x + size])
    return torch.from_numpy(np.stack(patches[:n]).astype(np.float32))[:, None]


@torch.no_grad()
def denoising_psnr(net: DnCNN, clean: Tensor, sigma: float, seed: int) -> dict[str, float]:
    """PSNR of the noisy images (fixed noise for a seed) and of the network's denoised ones, against the clean."""
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(seed)) * sigma
    device = next(net.parameters()).device
    noisy = clean + noise
    denoised = torch.cat([net(chunk.to(device)).cpu() for chunk in noisy.split(4)])
    return {"noisy_db": psnr(noisy, clean), "denoised_db": psnr(denoised, clean)}


def lipschitz(net: DnCNN, images: Tensor, iterations: int = 30) -> float:
    """Largest ||J_R(x)|| found over the images (each (1, H, W)): power iteration on J^T J with autograd's
    Jacobian-vector and vector-Jacobian products. R is piecewise linear, so this is its local Lipschitz constant."""
    device = next(net.parameters()).device
    generator = torch.Generator().manual_seed(0)
    best = 0.0
    for x in images.to(device):
        x = x[None]
        v = torch.randn(x.shape, generator=generator).to(device)
        v = v / v.norm()
        vjp = torch.func.vjp(net.residual, x)[1]
        sigma = 0.0
        for _ in range(iterations):
            jv = torch.func.jvp(net.residual, (x,), (v,))[1]
            sigma = float(jv.detach().norm())
            v = vjp(jv)[0]
            v = v / v.norm().clamp_min(1e-30)
        best = max(best, sigma)
    return best


def lipschitz_images(sigma: float, seed: int) -> Tensor:
    """Images to measure the Lipschitz constant at: uniform noise, noisy dead leaves, noisy ptychographic patches."""
    h, w = LIPSCHITZ_SIZE
    g = torch.Generator().manual_seed(seed)
    leaves = torch.from_numpy(dataset(2, seed, size=max(h, w))[:, :h, :w].astype(np.float32) / 255)[:, None]
    objects = ptycho_patches(2, max(h, w), seed)[..., :h, :w]
    clean = torch.cat([torch.rand(2, 1, h, w, generator=g), leaves, objects])
    return clean + sigma * torch.randn(clean.shape, generator=g)


def _batches(images: Tensor, config: TrainConfig, rng: np.random.Generator) -> list[Tensor]:
    """One epoch: every image once, in random order, as a random crop, in batches."""
    order = rng.permutation(len(images))
    top = rng.integers(0, config.image_size - config.patch + 1, size=(len(images), 2))
    crops = torch.stack(
        [images[i, :, y : y + config.patch, x : x + config.patch] for i, (y, x) in zip(order, top, strict=True)]
    )
    return list(crops.split(config.batch))


def dct_filters() -> Tensor:
    """The 8 non-constant filters (8, 3, 3) of the orthonormal 3x3 DCT-II basis."""
    k = torch.arange(3, dtype=torch.float64)
    norm = torch.tensor([1 / 3, 2 / 3, 2 / 3], dtype=torch.float64).sqrt()[:, None]
    basis = torch.cos(torch.pi * (2 * k[None] + 1) * k[:, None] / 6) * norm  # row k: the k-th 1D DCT-II vector
    pairs = [(a, b) for a in range(3) for b in range(3) if a + b > 0]
    return torch.stack([torch.outer(basis[a], basis[b]) for a, b in pairs]).float()


@torch.no_grad()
def _shrinkage_start(
    net: DnCNN, seed: int, thresholds: tuple[float, ...] = SHRINK_THRESHOLDS, sigma: float = SIGMA
) -> None:
    """Start R as a shrinkage denoiser's residual through live layers: R(x) = W^T clip(W x, t), W the 8 AC
    filters of the 3x3 DCT (a tight frame on the non-constant part; W^T W = Id - 3x3 box twice / 9), each
    channel a filter (channel c: filter c // (C / 8)) with its own threshold t (``thresholds`` x sigma, the
    noise's standard deviation in that channel), so D = Id - R soft-thresholds each coefficient (undecimated
    DCT shrinkage) and keeps the local mean. Layer 1: W x + t, ReLU: max(Wx, -t) + t >= 0. Layer 2: -1 on
    the diagonal, bias 2t, ReLU: t - clip(Wx, t) (a diagonal of -1 has operator norm 1). Layers 3 to
    depth - 1: the identity plus 1e-5 noise (it breaks the copies' symmetry; 1e-3 raised each layer's norm
    by ~3%, the spectral norm of 64 x 64 x 9 such weights, and RealSN then shrank R by a third, measured).
    Last: -W^T (the flipped filters). Every layer has operator norm 1 as set, so RealSN leaves it whole and
    nothing decays through the depth; the constant t reaches R only through the zero padding at the border.
    Measured on held-out images at sigma 15/255 before any training: object patches 24.6 -> 30.3 dB, dead
    leaves 24.6 -> 25.7 dB; the earlier linear high-pass start gave 25.1 / 25.0 dB."""
    channels = net.layers[0].out_channels
    if len(net.layers) < 3 or channels % 8:
        raise ValueError(f"the shrinkage start needs depth >= 3 and channels a multiple of 8, got {net}")
    generator = torch.Generator().manual_seed(seed)
    copies = channels // 8
    scale = 3 * copies**0.5  # the analysis operator of `copies` copies of the 8 filters has norm 3 sqrt(copies)
    filters = dct_filters().repeat_interleave(copies, dim=0) / scale  # (C, 3, 3)
    t = torch.tensor([thresholds[c % copies % len(thresholds)] for c in range(channels)]) * sigma / scale
    first, second, last = net.layers[0], net.layers[1], net.layers[-1]
    first.weight.copy_(filters[:, None])
    first.bias.copy_(t)  # type: ignore[union-attr]  # DnCNN's convolutions all have biases
    second.weight.zero_()
    second.weight[torch.arange(channels), torch.arange(channels), 1, 1] = -1.0
    second.bias.copy_(2 * t)  # type: ignore[union-attr]
    last.weight.copy_(-filters.flip(1, 2)[None])
    last.bias.zero_()  # type: ignore[union-attr]
    for conv in net.layers[2:-1]:
        torch.nn.init.dirac_(conv.weight)
        conv.weight.add_(1e-5 * torch.randn(conv.weight.shape, generator=generator))
        conv.bias.zero_()  # type: ignore[union-attr]


def train(
    config: TrainConfig, out: Path, *, device: str = "cpu", seed: int = 0, progress: bool = True
) -> dict[str, Any]:
    """Train, write ``out/dncnn.pt`` (state_dict, float32) and ``out/dncnn.json`` (the manifest); return it."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    pixels = dataset(config.images, seed, config.image_size, recipe=config.data)
    images = torch.from_numpy(pixels.astype(np.float32) / 255)[:, None]
    heldout = torch.from_numpy(dataset(config.heldout, seed + 1_000_003, 128).astype(np.float32) / 255)[:, None]
    objects = ptycho_patches(config.heldout, 128, seed + 1_000_003)
    data_s = time.perf_counter() - started

    net = DnCNN(config.depth, config.channels)
    _shrinkage_start(net, seed, sigma=config.sigma)
    net = net.to(device)
    net.normalise_(iterations=100)
    before = {
        "dead_leaves": denoising_psnr(net, heldout, config.sigma, seed),
        "ptycho": denoising_psnr(net, objects, config.sigma, seed),
    }
    # a large eps: Adam with the usual 1e-8 moves every weight by ~lr per step, also the many whose gradient is
    # noise; RealSN then shrinks the useful path by the spectral norm that noise adds, and the network decays to
    # R = constant (measured, lr 1e-5 to 1e-3); with eps = 1e-2 small gradients make small steps. From the
    # shrinkage start, 100 steps at lr 1e-5 (measured, 8 held-out images each): eps 1e-2 dead leaves 26.2 dB,
    # object patches 29.5 dB; eps 1e-8 26.1 and 28.0 dB, falling; lr 1e-4 with eps 1e-2 26.0 and 27.9 dB
    optimiser = torch.optim.Adam(net.parameters(), lr=config.lr, eps=config.adam_eps)
    steps = config.epochs * math.ceil(config.images / config.batch)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps, eta_min=config.lr / 100)
    noise = torch.Generator(device=device).manual_seed(seed)
    bar = tqdm(total=steps, desc=f"train denoiser ({config.name})", unit="step", disable=not progress)
    train_started, losses = time.perf_counter(), []
    for _ in range(config.epochs):
        for clean in _batches(images, config, rng):
            clean = clean.to(device)
            noisy = clean + config.sigma * torch.randn(clean.shape, generator=noise, device=device)
            loss = ((net(noisy) - clean) ** 2).sum(dim=(1, 2, 3)).mean()  # || Y - D(X) ||^2 per image
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            net.normalise_()
            losses.append(loss.item())
            bar.update()
            bar.set_postfix(loss=f"{losses[-1]:.3g}")
    bar.close()
    train_s = time.perf_counter() - train_started
    net.normalise_(iterations=200)  # settle the last division on well-converged vectors
    net.eval()
    after = {
        "dead_leaves": denoising_psnr(net, heldout, config.sigma, seed),
        "ptycho": denoising_psnr(net, objects, config.sigma, seed),
    }
    bound = lipschitz(net, lipschitz_images(config.sigma, seed + 2_000_003))

    out.mkdir(parents=True, exist_ok=True)
    weights = out / "dncnn.pt"
    torch.save({k: v.detach().cpu().float() for k, v in net.state_dict().items()}, weights)
    manifest = {
        "network": {
            "kind": "DnCNN, residual output D(x) = x - R(x), 3x3 convolutions, ReLU, biases, no batch norm",
            "depth": config.depth,
            "channels": config.channels,
            "parameters": sum(p.numel() for p in net.parameters()),
            "spectral_normalisation": f"RealSN after every optimiser step: each convolution divided by its "
            f"operator norm on {SN_SIZE}x{SN_SIZE} images with zero padding (power iteration, conv2d and "
            "conv_transpose2d, persistent vectors, one iteration per step); 200 iterations after the last step",
        },
        "data": {
            "recipe": config.data,
            "description": "dead leaves (models/fdsl.py): half DL-Diverse (rotated circles, rectangles, triangles, "
            "radii ~ r^-3), half DL-Textured (the same shapes with grating and smooth-noise fills), 8-bit, "
            "scaled to [0, 1]; Gaussian noise drawn afresh for every batch"
            + (
                "; each image blended with a Gaussian random field: (1 - w) leaves + w field, w in "
                f"{list(FIELD_WEIGHTS)}, correlation length {list(FIELD_SCALES)} px at 128 x 128"
                if config.data == "leaves-on-fields"
                else ""
            ),
            "images": config.images,
            "image_size": config.image_size,
            "sigma": config.sigma,
            "seed": seed,
            "generation_s": round(data_s, 1),
        },
        "training": {
            **asdict(config),
            "steps": steps,
            "optimiser": "Adam (eps = adam_eps), cosine schedule to lr / 100",
            "loss": "|| Y - D(X) ||^2 per image, batch mean",
            "final_loss_mean_last_100": float(np.mean(losses[-100:])),
            "wall_s": round(train_s, 1),
            **environment(device),
        },
        "heldout": {
            "sigma": config.sigma,
            "dead_leaves": {
                "images": config.heldout,
                "size": 128,
                "before": before["dead_leaves"],
                "after": after["dead_leaves"],
            },
            "ptycho": {
                "patches": config.heldout,
                "size": 128,
                "source": "workers.simulate.make_object, real and imaginary parts each min-max scaled to [0, 1]",
                "before": before["ptycho"],
                "after": after["ptycho"],
            },
        },
        "lipschitz": {
            "measured": bound,
            "method": "power iteration on J^T J of R (autograd jvp/vjp), 30 iterations, max over 6 noisy images "
            f"of {LIPSCHITZ_SIZE[0]}x{LIPSCHITZ_SIZE[1]} (uniform, dead leaves, ptychographic object)",
        },
        "weights": weights_record(weights),
        "total_wall_s": round(time.perf_counter() - started, 1),
    }
    (out / "dncnn.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
