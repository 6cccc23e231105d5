"""Transform stages: functions of the state applied once between engine stages of a schedule.

A transform takes the shared ``ReconState``, the engine that holds the frames (for the frames,
the geometry and the device) and its options (``workers.schedule.TRANSFORM_OPTIONS``), changes the
state in place and returns what the result should record (attributes); the next engine stage
starts from the state. ``TRANSFORMS`` maps each ``workers.schedule.TransformName`` to its function.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import torch

from workers import ff_state, physics
from workers.engines.base import Engine
from workers.schedule import FastForwardOptions, TransformName, TransformOptions
from workers.state import ReconState

Transform = Callable[[ReconState, Engine, Any], dict[str, Any]]

log = logging.getLogger(__name__)


def recentre_probe(state: ReconState, engine: Engine, options: TransformOptions | None = None) -> dict[str, Any]:
    """Move the probe's intensity centroid to the frame centre (whole pixels), keeping the model's intensities.

    In the far field, P'(r) = P(r + d) with positions x' = x + d gives exit waves shifted by d,
    whose intensities are the same (exactly where the probe vanishes within d of its window's
    edges: the roll wraps what is there). So the probe is rolled by -d and every position moved by +d
    (d limited so that every window, with its sub-pixel padding, stays inside the object).
    Near field: a shifted exit wave is a shifted hologram, so the probe is left as it is.
    """
    if engine.geometry.kind != "far":
        return {}
    power = (state.probe.real.square() + state.probe.imag.square()).sum(0)
    m = power.shape[-1]
    axis = torch.arange(m, dtype=power.dtype, device=power.device)
    total = power.sum().clamp_min(1e-30)
    centroid = torch.stack([(power.sum(1) * axis).sum(), (power.sum(0) * axis).sum()]) / total
    wanted = torch.round(centroid - (m - 1) / 2).to(torch.float64)
    pos = state.positions
    pad = physics.SUBPIXEL_PAD + 1
    low = torch.ceil(pad - pos.min(0).values)
    high = torch.floor(
        torch.tensor(state.object.shape, dtype=torch.float64, device=pos.device) - m - pad - pos.max(0).values
    )
    d = torch.minimum(torch.maximum(wanted, low), high)
    shift = [int(v) for v in d.tolist()]
    if shift == [0, 0]:
        return {}
    state.probe = torch.roll(state.probe, shifts=(-shift[0], -shift[1]), dims=(-2, -1))
    state.positions = pos + d
    engine.positions_changed()
    return {}


def fast_forward(state: ReconState, engine: Engine, options: FastForwardOptions | None = None) -> dict[str, Any]:
    """Seed 003's learned jump: O <- the U-Net's estimate of the state that many more iterations would reach
    (``workers.ff_state``; the probe and positions are kept), applied once after a warm-up.

    The guard: the data residual on all frames (``ff_state.data_residual``) is measured before and after; a
    jump that raises it is undone (logged), and the run continues from the warm-up state. Returns the attribute
    ``fast_forward`` (JSON): accepted, the residuals, the seconds spent (network, guard and all) and the weights.
    """
    from models.unet import WEIGHTS, apply_tiled, load_fast_forward

    options = options or FastForwardOptions.model_validate({})
    started = time.perf_counter()
    net = load_fast_forward(options.weights, device=engine.device)
    before = ff_state.data_residual(engine)
    x, c = ff_state.features(state.object, ff_state.illumination(state, engine.n_frames))
    change = apply_tiled(net, x, net.multiple, options.tile, options.overlap)
    candidate = ff_state.jumped(state.object, x, c, change)
    after = ff_state.data_residual(engine, candidate)
    accepted = bool(torch.isfinite(candidate).all()) and (not options.guard or after <= before)
    if accepted:
        state.object = candidate
    else:
        log.warning(
            "fast-forward: jump rejected (data residual %.6g -> %.6g); continuing from the warm-up state", before, after
        )
    record = {
        "accepted": accepted,
        "residual_before": before,
        "residual_after": after,
        "guard": options.guard,
        "seconds": round(time.perf_counter() - started, 4),
        "weights": str(options.weights or WEIGHTS),
    }
    return {"fast_forward": json.dumps(record)}


TRANSFORMS: dict[TransformName, Transform] = {
    TransformName.RECENTRE_PROBE: recentre_probe,
    TransformName.FAST_FORWARD: fast_forward,
}
