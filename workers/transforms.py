"""Transform stages: functions of the state applied once between engine stages of a schedule.

A transform takes the shared ``ReconState`` and the engine that holds the frames (for the
frames, the geometry and the device) and changes the state in place; the next engine stage
starts from it. ``TRANSFORMS`` maps each ``workers.schedule.TransformName`` to its function.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from workers import physics
from workers.engines.base import Engine
from workers.schedule import TransformName
from workers.state import ReconState

Transform = Callable[[ReconState, Engine], None]


def recentre_probe(state: ReconState, engine: Engine) -> None:
    """Move the probe's intensity centroid to the frame centre (whole pixels), keeping the model's intensities.

    In the far field, P'(r) = P(r + d) with positions x' = x + d gives exit waves shifted by d,
    whose intensities are the same (exactly where the probe vanishes within d of its window's
    edges: the roll wraps what is there). So the probe is rolled by -d and every position moved by +d
    (d limited so that every window, with its sub-pixel padding, stays inside the object).
    Near field: a shifted exit wave is a shifted hologram, so the probe is left as it is.
    """
    if engine.geometry.kind != "far":
        return
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
        return
    state.probe = torch.roll(state.probe, shifts=(-shift[0], -shift[1]), dims=(-2, -1))
    state.positions = pos + d
    engine.positions_changed()


TRANSFORMS: dict[TransformName, Transform] = {TransformName.RECENTRE_PROBE: recentre_probe}
