"""Training the fast-forward U-Net (seed 003) on warm-up / converged pairs (``models.ff_data``): seeded, Adam, the
seed's L2 + gradient loss on random crops (flips and quarter turns), held-out measures before writing the weights
and a manifest (recipe, network, steps, wall time, device, held-out figures, sha256)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from models.ff_data import FAR_PROBES, DataConfig, load_pairs, network_arrays, recipe, shard_count, write_shard
from models.manifest import environment, weights_record
from models.unet import UNet, apply_tiled, fast_forward_loss, save_fast_forward

HELDOUT_SEED_OFFSET = 1_000_003  # held-out scans: another data-set seed, so other objects, probes and noise
WEIGHT_LEVEL = 0.1  # illumination (fraction of its maximum) at which a pixel's loss weight reaches 1


@dataclass(frozen=True)
class TrainConfig:
    """A recipe: the training and held-out data, the network, and the optimisation."""

    name: str
    data: DataConfig
    heldout: DataConfig
    levels: int = 4
    width: int = 12
    crop: int = 64
    batch: int = 16
    steps: int = 2000
    lr: float = 1e-3
    gradient_weight: float = 1.0
    tile: int = 128
    overlap: int = 32


CONFIGS = {
    # seconds on a CPU, for the tests: a few tiny scans, a narrow network, a few steps
    "tiny": TrainConfig(
        "tiny",
        DataConfig(scans=2, per_shard=1, probe_sizes=(16,), positions=(16, 20), warmup=3, converge_iterations=4),
        DataConfig(scans=1, per_shard=1, probe_sizes=(16,), positions=(16, 20), warmup=3, converge_iterations=4),
        width=2,
        crop=32,
        batch=2,
        steps=3,
        tile=32,
        overlap=8,
    ),
    # the shipped weights: small scans, about 15 min of data and 10 min of training on one CPU core
    "small": TrainConfig(
        "small",
        DataConfig(scans=72, per_shard=8, probe_sizes=(32, 48), positions=(100, 160)),
        DataConfig(scans=8, per_shard=8, probe_sizes=(32, 48), positions=(100, 160)),
        width=12,
        crop=64,
        steps=3000,
    ),
    # for a GPU: thousands of beamline-sized scans, a wider network, larger crops
    "full": TrainConfig(
        "full",
        DataConfig(scans=4000, per_shard=16, probe_sizes=(64, 96, 128), positions=(200, 600)),
        DataConfig(scans=64, per_shard=16, probe_sizes=(64, 96, 128), positions=(200, 600)),
        width=32,
        crop=128,
        batch=32,
        steps=100_000,
        tile=256,
        overlap=64,
    ),
}


def make_data(config: TrainConfig, folder: Path, seed: int) -> dict[str, float]:
    """Write (or keep, resuming) the training shards in ``folder/train`` and the held-out ones in
    ``folder/heldout``, one after another; the seconds each part took."""
    times = {}
    for part, data, part_seed in (
        ("train", config.data, seed),
        ("heldout", config.heldout, seed + HELDOUT_SEED_OFFSET),
    ):
        started = time.perf_counter()
        for shard in range(shard_count(data)):
            write_shard(folder / part, shard, data, part_seed)
        times[part] = time.perf_counter() - started
    return times


def loss_weight(x: Tensor) -> Tensor:
    """Per-pixel loss weight (B, 1, H, W) from the illumination channel: 0 unlit, 1 from WEIGHT_LEVEL up."""
    return (x[:, 2:3] / WEIGHT_LEVEL).clamp(0, 1)


def _crop(x: Tensor, y: Tensor, size: int, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
    """A random ``size`` crop (padded with the edge where the object is smaller) in a random flip and
    quarter turn, taken where the illumination is above WEIGHT_LEVEL when possible."""
    h, w = x.shape[-2:]
    if h < size or w < size:
        pad = (0, max(size - w, 0), 0, max(size - h, 0))
        x = torch.nn.functional.pad(x[None], pad, mode="replicate")[0]
        y = torch.nn.functional.pad(y[None], pad, mode="replicate")[0]
        h, w = x.shape[-2:]
    rows, cols = torch.nonzero(x[2] >= WEIGHT_LEVEL, as_tuple=True)
    if rows.numel():
        k = int(rng.integers(rows.numel()))
        r = int(np.clip(int(rows[k]) - size // 2, 0, h - size))
        c = int(np.clip(int(cols[k]) - size // 2, 0, w - size))
    else:
        r, c = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
    xs, ys = x[:, r : r + size, c : c + size], y[:, r : r + size, c : c + size]
    turns = int(rng.integers(4))
    xs, ys = torch.rot90(xs, turns, (1, 2)), torch.rot90(ys, turns, (1, 2))
    if rng.uniform() < 0.5:
        xs, ys = xs.flip(2), ys.flip(2)
    return xs, ys


@torch.no_grad()
def heldout_figures(net: UNet, pairs: list[dict[str, Any]], config: TrainConfig, device: str) -> dict[str, Any]:
    """On held-out scans: the distance of the warm-up and of the jumped object from the converged one (relative,
    weighted as the loss), and the data residual before and after the jump (re-simulated from the recipe), i.e.
    whether the stage's guard would keep it."""
    from workers import ff_state
    from workers.engines.options import OPTIONS, EngineName
    from workers.engines.registry import make_engine
    from workers.simulate import simulate
    from workers.state import ReconState

    rows = []
    for pair in pairs:
        x, target = network_arrays(pair)
        change = apply_tiled(net, x.to(device), net.multiple, config.tile, config.overlap).cpu()
        weight = loss_weight(x[None])[0]
        wanted = target - x[:2]
        before = float((weight * wanted.square()).sum().sqrt())
        after = float((weight * (wanted - change).square()).sum().sqrt())
        spec = pair["recipe"]
        keys = ("probe_size", "n_positions", "overlap", "photons", "near_field", "probe_kind", "scan", "seed")
        data = simulate(**{k: spec[k] for k in keys})
        state = ReconState.initial(pair["probe"])
        name = EngineName(config.data.warmup_engine)
        engine = make_engine(name, state, data.geometry, OPTIONS[name].model_validate({}))
        engine.add_frames(data.intensities, data.positions)
        state.object = torch.from_numpy(pair["warm"])
        obj = state.object
        _, c = ff_state.features(obj, torch.from_numpy(pair["illumination"]))
        res_before = ff_state.data_residual(engine)
        res_after = ff_state.data_residual(engine, ff_state.jumped(obj, x, c, change))
        rows.append(
            {
                "index": spec["index"],
                "distance_warm": before / max(float((weight * target.square()).sum().sqrt()), 1e-12),
                "distance_jumped": after / max(float((weight * target.square()).sum().sqrt()), 1e-12),
                "residual_warm": res_before,
                "residual_jumped": res_after,
                "residual_converged": float(pair["residual_converged"]),
                "accepted": res_after <= res_before,
            }
        )
    return {
        "scans": rows,
        "mean_distance_warm": float(np.mean([r["distance_warm"] for r in rows])),
        "mean_distance_jumped": float(np.mean([r["distance_jumped"] for r in rows])),
        "accepted": int(sum(r["accepted"] for r in rows)),
        "measure": "distance: || w (O - O_converged) || / || w O_converged || in the network's normalised channels "
        "(w the loss weight); residual: the data residual of all frames (the engines' loss) with the warm-up "
        "probe; accepted: the jump lowers it (what the stage's guard checks)",
    }


def train(
    config: TrainConfig,
    out: Path,
    *,
    data_dir: Path | None = None,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Make (or resume) the data in ``data_dir`` (default ``out/data``), train, write ``out/fast_forward.pt`` and
    ``out/fast_forward.json`` (the manifest); return the manifest."""
    started = time.perf_counter()
    folder = data_dir or out / "data"
    data_s = make_data(config, folder, seed)
    return fit(config, out, folder, device=device, seed=seed, progress=progress, data_s=data_s, started=started)


def fit(
    config: TrainConfig,
    out: Path,
    folder: Path,
    *,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
    data_s: dict[str, float] | None = None,
    started: float | None = None,
) -> dict[str, Any]:
    """Train on the shards in ``folder/train``, measure on ``folder/heldout``; weights and manifest in ``out``."""
    started = started or time.perf_counter()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    pairs, heldout = load_pairs(folder / "train"), load_pairs(folder / "heldout")
    if not pairs or not heldout:
        raise ValueError(f"{folder}: no training or held-out shards")
    arrays = [network_arrays(p) for p in pairs]
    net = UNet(config.levels, config.width).to(device)
    optimiser = torch.optim.Adam(net.parameters(), lr=config.lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=config.steps, eta_min=config.lr / 100)
    bar = tqdm(total=config.steps, desc=f"train fast-forward ({config.name})", unit="step", disable=not progress)
    train_started, losses = time.perf_counter(), []
    for _ in range(config.steps):
        crops = [_crop(*arrays[int(rng.integers(len(arrays)))], config.crop, rng) for _ in range(config.batch)]
        x = torch.stack([c[0] for c in crops]).to(device)
        y = torch.stack([c[1] for c in crops]).to(device)
        loss = fast_forward_loss(net(x), y - x[:, :2], loss_weight(x), config.gradient_weight)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(loss.item())
        bar.update()
        bar.set_postfix(loss=f"{losses[-1]:.3g}")
    bar.close()
    train_s = time.perf_counter() - train_started
    net.eval()
    figures = heldout_figures(net, heldout, config, device)

    out.mkdir(parents=True, exist_ok=True)
    weights = out / "fast_forward.pt"
    meta = {"warmup_engine": config.data.warmup_engine, "warmup": config.data.warmup, "config": config.name}
    save_fast_forward(net.cpu(), weights, meta)
    manifest = {
        "network": {
            "kind": "U-Net (seed 003): 4 levels, two 3x3 convolutions + ReLU per level, max pooling, transposed "
            "convolutions, skip connections, no normalisation layers, 1x1 head started at zero (no jump)",
            "levels": config.levels,
            "width": config.width,
            "parameters": sum(p.numel() for p in net.parameters()),
            "input": "Re(O/c) - 1, Im(O/c), illumination / max (c: the illumination-weighted mean of O)",
            "output": "the change of the two object channels",
            "applied": {"tile": config.tile, "overlap": config.overlap},
        },
        "data": {
            "recipe": "workers.simulate scans (models/ff_data.py): objects with sharp and smooth features; far-field "
            f"probes {', '.join(FAR_PROBES)}, near-field diffuser beams ({config.data.near_fraction:.0%}); photons "
            "log-uniform 1e4-1e7; overlap 50-80 %; fermat, raster or random scans; the data-derived start probe; "
            f"warm-up: {config.data.warmup} epochs of {config.data.warmup_engine}; converged: BH-CG from the "
            f"warm-up with its probe fixed, up to {config.data.converge_iterations} iterations (tolerance "
            f"{config.data.converge_tolerance:g} over 5)",
            "train": {**asdict(config.data), "seed": seed, "scans_found": len(pairs)},
            "heldout": {**asdict(config.heldout), "seed": seed + HELDOUT_SEED_OFFSET, "scans_found": len(heldout)},
            "generation_s": {k: round(v, 1) for k, v in (data_s or {}).items()},
            "reconstruction_s_sum": round(float(sum(p["seconds"] for p in [*pairs, *heldout])), 1),
            "example_recipe": recipe(config.data, seed, 0),
        },
        "training": {
            "name": config.name,
            "steps": config.steps,
            "batch": config.batch,
            "crop": config.crop,
            "lr": config.lr,
            "gradient_weight": config.gradient_weight,
            "optimiser": "Adam, cosine schedule to lr / 100",
            "loss": "weighted mean of |pred - dO|^2 + gradient_weight x that of its finite differences (seed 003); "
            f"weight: illumination / ({WEIGHT_LEVEL} max), clipped to 1; crops in random flips and quarter turns",
            "final_loss_mean_last_100": float(np.mean(losses[-100:])),
            "wall_s": round(train_s, 1),
            **environment(device),
        },
        "heldout": figures,
        "weights": weights_record(weights),
        "total_wall_s": round(time.perf_counter() - started, 1),
    }
    text = json.dumps(manifest, indent=2) + "\n"
    (out / "fast_forward.json").write_text(text)
    return dict(json.loads(text))  # as the file holds it (tuples as lists)
