"""The fast-forward network's view of a reconstruction state (seed 003): its input channels, the jump, the guard.

Normalisation: the data fix the product P S_r O only, so an object carries a free global complex scale (and a
warm-up has not fixed it yet). The object is divided by its illumination-weighted mean c = sum w O / sum w
(w: the illumination map over its maximum), so that the network sees objects near 1 + 0i whatever their global
phase and scale, and the network's output is multiplied by c again: the jumped object keeps the scale the probe
was fitted to. Where nothing is illuminated (w below ``LIT``) the object is left as it is.
"""

from __future__ import annotations

import torch
from torch import Tensor

from workers import physics
from workers.engines.base import Engine
from workers.state import ReconState

LIT = 1e-3  # illumination (fraction of its maximum) below which a pixel is left unchanged by the jump


def illumination(state: ReconState, n_frames: int | None = None) -> Tensor:
    """sum_r |P(x - r)|^2 over the first ``n_frames`` positions (all if None), placed at the integer corners;
    (H, W) float32 on the state's device."""
    positions = state.positions if n_frames is None else state.positions[:n_frames]
    corner, _ = physics.split_positions(positions)
    power = state.probe.real.square().sum(0) + state.probe.imag.square().sum(0)
    h, w = state.object.shape
    return physics.extract_adjoint(power.expand(corner.shape[0], -1, -1), corner, (h, w))


def features(obj: Tensor, illum: Tensor) -> tuple[Tensor, Tensor]:
    """The network's input (3, H, W) float32: Re(O / c) - 1, Im(O / c), w = illum / max(illum); and c (complex
    scalar), the w-weighted mean of O (module docstring)."""
    w = (illum / illum.max().clamp_min(1e-30)).to(torch.float32)
    c = (w * obj).sum() / w.sum().clamp_min(1e-30)
    if not bool(c.abs() > 0):
        c = torch.ones((), dtype=obj.dtype, device=obj.device)
    normed = obj / c
    return torch.stack([normed.real - 1, normed.imag, w]), c


def target_channels(obj: Tensor, c: Tensor) -> Tensor:
    """A (converged) object (H, W) in the channels the network predicts (2, H, W): Re(O / c) - 1, Im(O / c)."""
    normed = obj / c
    return torch.stack([normed.real - 1, normed.imag]).to(torch.float32)


def jumped(obj: Tensor, x: Tensor, c: Tensor, change: Tensor) -> Tensor:
    """The object after the jump: c (O / c + change) where lit (w = x[2] >= LIT), O elsewhere; (H, W) complex."""
    new = c * (obj / c + torch.complex(change[0], change[1]).to(obj.dtype))
    return torch.where(x[2] >= LIT, new, obj)


@torch.no_grad()
def data_residual(engine: Engine, obj: Tensor | None = None, batch: int = 64) -> float:
    """sum_r || |D(P S_r O)| - sqrt(I_r) ||^2 / sum_r sum I_r over every frame the engine holds, for the state's
    object or ``obj`` (the same normalisation as the engines' loss, but of one state, not accumulated during a
    sweep that changes it)."""
    state = engine.state
    o = state.object if obj is None else obj
    total = torch.zeros((), dtype=torch.float64, device=engine.device)
    for start in range(0, engine.n_frames, batch):
        index = torch.arange(start, min(start + batch, engine.n_frames), device=engine.device)
        corner, frac = engine.split(index)
        patches = physics.patches(o, corner, frac, engine.size, physics.SUBPIXEL_PAD)
        amp = physics.model_amplitude(engine.propagator.forward(physics.exit_waves(state.probe, patches)))
        total += physics.amplitude_residual(amp, engine.amplitudes[index], engine.mask).to(torch.float64)
    return float(total) / max(engine.total_intensity, 1e-30)
