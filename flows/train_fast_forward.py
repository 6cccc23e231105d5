"""The ``train_fast_forward`` flow (seed 003): simulated scans reconstructed to warm-up / converged pairs in HDF5
shards (one task per shard: seeded, resumable, ``workers`` at a time), then the U-Net trained on them; weights
and manifest out."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE


@task(cache_policy=NO_CACHE, task_run_name="shard-{part}-{shard}")
def make_shard(config: str, folder: str, part: str, shard: int, seed: int) -> str:
    """Reconstruct one shard's scans and write it (a shard that exists is kept); its path."""
    from models.ff_data import write_shard
    from models.ff_train import CONFIGS, HELDOUT_SEED_OFFSET

    recipe = CONFIGS[config]
    data, part_seed = (recipe.data, seed) if part == "train" else (recipe.heldout, seed + HELDOUT_SEED_OFFSET)
    return str(write_shard(Path(folder) / part, shard, data, part_seed))


@task(cache_policy=NO_CACHE)
def fit_network(
    config: str, out: str, folder: str, device: str, seed: int, progress: bool, data_s: dict[str, float]
) -> dict[str, Any]:
    """Train on the shards, measure on the held-out ones, write ``fast_forward.pt`` and ``fast_forward.json``."""
    from models.ff_train import CONFIGS, fit
    from workers.devices import resolve_device

    device = str(resolve_device(device))
    return fit(CONFIGS[config], Path(out), Path(folder), device=device, seed=seed, progress=progress, data_s=data_s)


@flow(name="train_fast_forward")
def train_fast_forward(
    config: str = "small",
    out: str = "results/fast_forward",
    data_dir: str | None = None,
    device: str = "cpu",
    seed: int = 0,
    workers: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Make the data (``workers`` shards at a time) in ``data_dir`` (default ``out/data``), then train with the
    named recipe of ``models.ff_train.CONFIGS`` (tiny, small or full) on ``device``; the manifest."""
    from models.ff_data import shard_count
    from models.ff_train import CONFIGS

    if config not in CONFIGS:
        raise ValueError(f"unknown fast-forward config {config!r}: use one of {', '.join(CONFIGS)}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    folder = data_dir or str(Path(out) / "data")
    data_s = {}
    for part, data in (("train", CONFIGS[config].data), ("heldout", CONFIGS[config].heldout)):
        started = time.perf_counter()
        shards = list(range(shard_count(data)))
        for k in range(0, len(shards), workers):
            futures = [make_shard.submit(config, folder, part, s, seed) for s in shards[k : k + workers]]
            for future in futures:
                future.result()
        data_s[part] = time.perf_counter() - started
    manifest: dict[str, Any] = fit_network(config, out, folder, device, seed, progress, data_s)
    return manifest
