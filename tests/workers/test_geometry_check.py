"""A near-field file read as far field is told apart by its scan steps (measured PETRA scan, simulated far field)."""

from __future__ import annotations

import os

import numpy as np

from workers.geometry_check import far_field_warning, median_step
from workers.io import load_scan
from workers.simulate import simulate


def test_median_step_of_a_grid() -> None:
    grid = np.stack(np.meshgrid(np.arange(5) * 3.0, np.arange(4) * 3.0, indexing="ij"), -1).reshape(-1, 2)
    assert median_step(grid) == 3.0
    assert median_step(grid[:1]) == 0.0


def test_petra_read_as_far_field_warns(shared_data: str) -> None:
    path = os.path.join(shared_data, "petra_p25_nearfield.cxi")
    message = far_field_warning(load_scan(path))
    assert message is not None and "petra_p25_nearfield.cxi: geometry:" in message and "--near-field" in message
    assert "\n" not in message
    assert far_field_warning(load_scan(path, near_field=True, focus_distance=3.65e-3)) is None


def test_far_field_scans_do_not_warn() -> None:
    for overlap in (0.0, 0.6):
        assert far_field_warning(simulate(probe_size=32, n_positions=40, overlap=overlap, seed=3)) is None
