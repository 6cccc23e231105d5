"""CUDA paths (skipped without CUDA): engines on the GPU agree with the CPU; raw counts reach the device."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workers.data import ScanData
from workers.engines.registry import make_engine
from workers.probe_start import initial_probe
from workers.state import ReconState

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("name", ["epie", "rpie", "adam", "bh-cg"])
def test_engines_on_cuda_agree_with_cpu(tiny_scan: ScanData, name: str) -> None:
    losses = {}
    for device in ("cpu", "cuda"):
        state = ReconState.initial(initial_probe(tiny_scan)[0], device=device)
        engine = make_engine(name, state, tiny_scan.geometry, {}, seed=0)
        engine.add_frames(tiny_scan.intensities, tiny_scan.positions)
        losses[device] = engine.iterate(5)
        assert engine.state.object.device.type == device
    np.testing.assert_allclose(losses["cuda"], losses["cpu"], rtol=2e-2)


def test_raw_counts_become_the_same_amplitudes_on_cuda(small_scan: ScanData) -> None:
    counts = np.round(small_scan.intensities[:10]).astype(np.uint16)
    amplitudes = []
    for device in ("cpu", "cuda"):
        state = ReconState.initial(initial_probe(small_scan)[0], device=device)
        engine = make_engine("epie", state, small_scan.geometry)
        engine.add_frames(counts, small_scan.positions[:10])
        amplitudes.append(engine.amplitudes[: engine.n_frames].cpu())
    torch.testing.assert_close(amplitudes[1], amplitudes[0])
