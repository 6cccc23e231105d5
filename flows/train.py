"""The ``train_denoiser`` flow: PINE's nonexpansive DnCNN trained on dead-leaves images, weights and manifest out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE


@task(cache_policy=NO_CACHE)
def fit(config: str, data: str | None, out: str, device: str, seed: int, progress: bool) -> dict[str, Any]:
    """Generate the data, train, measure, write ``dncnn.pt`` and ``dncnn.json`` in ``out``; the manifest."""
    from models.train import config_for, train
    from workers.devices import resolve_device

    recipe = config_for(config, data)
    return train(recipe, Path(out), device=str(resolve_device(device)), seed=seed, progress=progress)


@flow(name="train_denoiser")
def train_denoiser(
    config: str = "small",
    out: str = "results/denoiser",
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
    data: str | None = None,
) -> dict[str, Any]:
    """Train with a named recipe of ``models.train.CONFIGS`` (tiny, small or full) on ``device``, seeded;
    ``data`` (leaves or leaves-on-fields) replaces the recipe's training images."""
    from models.train import config_for

    config_for(config, data)  # refuses an unknown config or recipe before the task starts
    result: dict[str, Any] = fit(config, data, out, device, seed, progress)
    return result
