"""Element-map quality against a simulation's truth: relative error, FRC, and the probe's own resolution."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from workers.images import illuminated_region
from workers.metrics import masked_frc


def probe_cutoff(probe: np.ndarray, level: float = 0.1) -> float:
    """Frequency (cycles/px) where the radial mean of |FT(|P|^2)| / its value at 0 falls below ``level``:
    the resolution limit of fluorescence measured with this probe (its transfer function)."""
    power = (np.abs(probe.reshape(-1, *probe.shape[-2:])) ** 2).sum(0)
    mtf = np.abs(np.fft.fft2(power))
    mtf /= mtf[0, 0]
    fy, fx = np.fft.fftfreq(mtf.shape[0])[:, None], np.fft.fftfreq(mtf.shape[1])[None, :]
    edges = np.linspace(0, 0.5, mtf.shape[0] // 2 + 1)
    which = np.digitize(np.sqrt(fy**2 + fx**2), edges) - 1
    ok = which < len(edges) - 1
    n = len(edges) - 1
    mean = np.bincount(which[ok], mtf[ok], n) / np.maximum(np.bincount(which[ok], None, n), 1)
    below = np.flatnonzero(mean < level)
    return float(0.5 * (edges[below[0]] + edges[below[0] + 1])) if len(below) else 0.5


def frc_crossing(freq: np.ndarray, values: np.ndarray, threshold: float = 0.5) -> float:
    """The first frequency whose FRC is below ``threshold`` (the last one if none is)."""
    below = np.flatnonzero(values < threshold)
    return float(freq[below[0]]) if len(below) else float(freq[-1])


def element_metrics(result: Mapping[str, Any], truth: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Per element with a truth map ``elements/<symbol>``: ``<symbol>_map_error`` ||w - w*||^2 / ||w*||^2 and
    ``<symbol>_frc05`` (1/px, FRC 0.5 crossing), over the lit region, the result's array placed on the
    truth's by its ``origin`` (simulated scans: no registration); and ``probe_cutoff`` of the truth probe."""
    maps = result.get("elements", {})
    probe, positions = truth["probe"], truth["positions"]
    shape = truth["object"].shape
    lit = illuminated_region(probe, positions, shape)
    r, c = np.round(np.asarray(result["origin"])).astype(int)
    out: dict[str, float] = {}
    for name, estimate in maps.items():
        key = f"elements/{name}"
        if key not in truth:
            continue
        est = np.asarray(estimate)[r : r + shape[0], c : c + shape[1]]
        ref = truth[key]
        out[f"{name}_map_error"] = float(np.sum((est - ref)[lit] ** 2) / np.sum(ref[lit] ** 2))
        out[f"{name}_frc05"] = frc_crossing(*masked_frc(est, ref, lit))
    if out:
        out["probe_cutoff"] = probe_cutoff(probe)
    return out
