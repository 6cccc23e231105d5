"""Shared fixtures: small simulated scans (generated, seeded) and the CUDA skip for GPU tests."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from workers.data import ScanData  # noqa: E402
from workers.simulate import simulate  # noqa: E402

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def small_scan() -> ScanData:
    """Far field, 64 px frames, 100 positions, 70% overlap, 1e6 photons (Poisson)."""
    return simulate(probe_size=64, n_positions=100, overlap=0.7, photons=1e6, seed=1)


@pytest.fixture(scope="session")
def tiny_scan() -> ScanData:
    """Far field, 32 px frames, 36 positions, noise-free: for fast engine checks."""
    return simulate(probe_size=32, n_positions=36, overlap=0.75, photons=float("inf"), seed=2)


@pytest.fixture(scope="session")
def shared_data() -> str:
    path = os.path.abspath(SHARED_DATA)
    if not os.path.isdir(path):
        pytest.fail(f"shared datasets not found at {path}: the repository must sit beside shared/")
    return path
