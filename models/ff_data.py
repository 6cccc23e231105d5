"""Training pairs for the fast-forward U-Net (seed 003): simulated scans reconstructed to a warm-up state and to a
converged state, written as HDF5 shards with their recipe.

Each scan draws its recipe from its own seed (``recipe``): a simulated object with sharp and smooth features
(``workers.simulate``), a probe (far field: focused, Airy, zone plate, KB or structured; near field: a diffuser
beam), a dose of 1e4-1e7 photons per frame, an overlap of 50-80 %, a scan pattern. The scan is reconstructed as a
user's run would be: the data-derived start probe, then ``warmup`` epochs of the warm-up engine (the warm-up
state); then BH-CG (seed 002) with that probe held fixed runs from it until the loss stops improving (the converged
state: the object the iterations reach for this probe, in the same array and gauge as the warm-up object, so no
registration is needed). A shard holds ``per_shard`` scans; it is written atomically, and a shard that exists
(made with the same recipe and seed) is skipped, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

FAR_PROBES = ("focused", "airy", "zone-plate-25", "kb", "structured")
SCANS = ("fermat", "raster", "random")


@dataclass(frozen=True)
class DataConfig:
    """How many scans and of what kind (ranges are inclusive; photons are drawn log-uniformly)."""

    scans: int
    per_shard: int
    probe_sizes: tuple[int, ...]
    positions: tuple[int, int]
    photons: tuple[float, float] = (1e4, 1e7)
    overlap: tuple[float, float] = (0.5, 0.8)
    near_fraction: float = 0.2
    warmup_engine: str = "epie"
    warmup: int = 50
    converge_iterations: int = 150
    converge_tolerance: float = 1e-5


def recipe(config: DataConfig, seed: int, index: int) -> dict[str, Any]:
    """The simulation recipe of scan ``index`` of the data set ``seed`` (a pure function of the two)."""
    rng = np.random.default_rng([seed, index])
    near = bool(rng.uniform() < config.near_fraction)
    return {
        "index": index,
        "probe_size": int(rng.choice(config.probe_sizes)),
        "n_positions": int(rng.integers(config.positions[0], config.positions[1] + 1)),
        "overlap": float(rng.uniform(*config.overlap)),
        "photons": float(10 ** rng.uniform(*np.log10(config.photons))),
        "near_field": near,
        "probe_kind": "near" if near else str(rng.choice(FAR_PROBES)),
        "scan": str(rng.choice(SCANS)),
        "seed": int(rng.integers(2**31)),
    }


def reconstruct_pair(spec: dict[str, Any], config: DataConfig) -> dict[str, Any]:
    """Simulate ``spec`` and reconstruct it: the warm-up and converged objects, the warm-up probe, the warm-up
    state's illumination map, the true object, the data residual of both states and the seconds spent."""
    from workers import ff_state
    from workers.engines.options import OPTIONS, EngineName
    from workers.engines.registry import make_engine
    from workers.probe_start import initial_probe
    from workers.simulate import simulate
    from workers.state import ReconState

    started = time.perf_counter()
    data = simulate(
        probe_size=spec["probe_size"],
        n_positions=spec["n_positions"],
        overlap=spec["overlap"],
        photons=spec["photons"],
        near_field=spec["near_field"],
        probe_kind=spec["probe_kind"],
        scan=spec["scan"],
        seed=spec["seed"],
    )
    probe, _ = initial_probe(data, 1, None, seed=spec["seed"])
    state = ReconState.initial(probe)
    name = EngineName(config.warmup_engine)
    warm_engine = make_engine(name, state, data.geometry, OPTIONS[name].model_validate({}), seed=spec["seed"])
    warm_engine.add_frames(data.intensities, data.positions)
    warm_engine.iterate(config.warmup)
    warm = state.to_numpy()
    residual_warm = ff_state.data_residual(warm_engine)
    illum = ff_state.illumination(state).numpy()
    options = OPTIONS[EngineName.BH_CG].model_validate({"update_probe": False})
    converge = make_engine(EngineName.BH_CG, state, data.geometry, options, seed=spec["seed"])
    converge.adopt_frames(warm_engine)
    losses: list[float] = []
    for _ in range(config.converge_iterations):
        losses += converge.iterate(1)
        if len(losses) > 5 and losses[-6] - losses[-1] < config.converge_tolerance * losses[-6]:
            break
    return {
        "warm": warm["object"],
        "converged": state.object.numpy().copy(),
        "probe": warm["probe"],
        "illumination": illum.astype(np.float32),
        "truth": data.truth["object"],
        "origin": warm["origin"],
        "residual_warm": residual_warm,
        "residual_converged": ff_state.data_residual(converge),
        "converge_iterations": len(losses),
        "seconds": time.perf_counter() - started,
    }


def shard_path(folder: Path, shard: int) -> Path:
    return folder / f"shard_{shard:05d}.h5"


def write_shard(folder: Path, shard: int, config: DataConfig, seed: int) -> Path:
    """Reconstruct the scans of ``shard`` and write them (atomically) unless the shard exists; its path."""
    from workers.atomic import replacing

    path = shard_path(folder, shard)
    if path.exists():
        with h5py.File(path, "r") as f:
            made = (_per_scan(json.loads(f.attrs["config"])), int(f.attrs["seed"]))
        if made != (_per_scan(json.loads(json.dumps(asdict(config)))), seed):
            raise ValueError(f"{path}: made with another recipe or seed; use another data folder")
        return path
    folder.mkdir(parents=True, exist_ok=True)
    first = shard * config.per_shard
    indices = range(first, min(first + config.per_shard, config.scans))
    pairs = [(recipe(config, seed, i), reconstruct_pair(recipe(config, seed, i), config)) for i in indices]
    with replacing(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["config"] = json.dumps(asdict(config))
        f.attrs["seed"] = seed
        for spec, pair in pairs:
            g = f.create_group(f"scan_{spec['index']:06d}")
            g.attrs["recipe"] = json.dumps(spec)
            for key in ("warm", "converged", "probe", "illumination", "truth", "origin"):
                g.create_dataset(key, data=pair[key], compression="gzip" if pair[key].ndim >= 2 else None)
            for key in ("residual_warm", "residual_converged", "converge_iterations", "seconds"):
                g.attrs[key] = pair[key]
    return path


def _per_scan(config: dict[str, Any]) -> dict[str, Any]:
    """What makes a shard's scans what they are: the recipe without the number of scans (which only decides how
    many shards there are, so that a larger data set reuses a smaller one's shards)."""
    return {k: v for k, v in config.items() if k != "scans"}


def shard_count(config: DataConfig) -> int:
    return math.ceil(config.scans / config.per_shard)


def load_pairs(folder: Path) -> list[dict[str, Any]]:
    """Every scan of every shard in ``folder`` (in shard order): arrays and the recipe."""
    pairs = []
    for path in sorted(folder.glob("shard_*.h5")):
        if ".tmp" in path.name:
            continue
        with h5py.File(path, "r") as f:
            for name in sorted(f):
                g = f[name]
                pair = {key: g[key][()] for key in g}
                pair.update({key: g.attrs[key] for key in g.attrs if key != "recipe"})
                pair["recipe"] = json.loads(g.attrs["recipe"])
                pairs.append(pair)
    return pairs


def network_arrays(pair: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """A pair as the network sees it: input (3, H, W) and target (2, H, W) float32 (``workers.ff_state``)."""
    from workers import ff_state

    x, c = ff_state.features(torch.from_numpy(pair["warm"]), torch.from_numpy(pair["illumination"]))
    return x, ff_state.target_channels(torch.from_numpy(pair["converged"]), c)
