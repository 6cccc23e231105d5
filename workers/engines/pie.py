"""The PIE family: one update, ePIE and rPIE as step-weight choices of it.

For a batch of frames with exit-wave corrections dpsi_k = psi'_k - psi_k (modulus
projection, masked pixels kept), the object and probe move by

    O   <- O   + a_O S*( sum_k conj(P_k) dpsi_k ) / ((1 - g_O) |P|^2 + g_O max |P|^2)
    P_k <- P_k + a_P sum_r conj(O_r) dpsi_rk   / ((1 - g_P) |O|^2 + g_P max |O|^2)

where, in the object update, |P|^2 = sum_k |P_k|^2 is summed over the batch's positions at
each object pixel and max |P|^2 is the single probe's maximum (so a batch of non-overlapping
frames makes each frame's serial update), and in the probe update |O|^2 = sum_r |O_r|^2 over
the batch. One frame per batch is the serial algorithm of the papers; larger batches are the
mini-batch form for GPUs.

* ePIE (Maiden & Rodenburg 2009, eqs. 6-7): a_O = alpha, a_P = beta, g_O = g_P = 1.
* rPIE (Maiden, Johnson & Li 2017, eq. 22 and its probe analogue): a = 1, g_O = alpha,
  g_P = beta.
Mixed-state probes follow Thibault & Menzel 2013: modes share the modulus projection and
are re-orthogonalised after each epoch.

Probe power constraint (not in the papers): after each probe update the probe is rescaled so
that sum |P|^2 stays at its value when the engine started (``Engine.probe_power``). The data fix
only the product P S_r O, so (O / s, s P) is a free direction; on noisy data the serial probe
update drifts along it (every frame's update adds that frame's noise to P, so |P| grows and O
shrinks to compensate). The barely illuminated object pixels at the scan's edge are hardly
updated and do not follow, so the outer frames' model grows with |P| and the loss rises without
bound. Measured on the Siemens star, 120 rPIE epochs: sum |P|^2 x 1.8e5, the object's median
amplitude 0.99 -> 0.002, the residual of the outer 20% of frames 0.022 -> 0.32 (inner frames
0.024 -> 0.061). Rescaling P and O together each epoch left every loss as it was (the updates
are covariant under it). Holding only the probe's power fixes the direction; the object then
carries the scale (its updates absorb the rescaling, an O(noise) change per frame). A
noise-free scan barely moves along the direction, so there the constraint changes little.
"""

from __future__ import annotations

from abc import abstractmethod

import torch

from workers import physics
from workers.engines.base import BatchedEngine, orthogonalize_modes
from workers.engines.options import EngineName, PIEOptions

TINY = torch.finfo(torch.float32).tiny  # denominator floor: a zero probe or object patch gives a zero step, not 0 / 0


def step_weights(kind: str, alpha: float, beta: float) -> tuple[float, float, float, float]:
    """(a_O, g_O, a_P, g_P) of the module docstring: ePIE's steps or rPIE's weights (``kind``)."""
    return (1.0, alpha, 1.0, beta) if kind == "rpie" else (alpha, 1.0, beta, 1.0)


class PIE(BatchedEngine):
    """Shared PIE update; subclasses choose the step weights (a_O, g_O, a_P, g_P)."""

    options: PIEOptions

    @abstractmethod
    def weights(self) -> tuple[float, float, float, float]:
        """(a_O, g_O, a_P, g_P) of the module docstring."""

    def epoch_step(self, update_probe: bool) -> torch.Tensor:
        residual = torch.zeros((), device=self.device)
        for index in self.batches():
            residual += self.batch_step(index, update_probe)
        if update_probe:
            self.state.probe = orthogonalize_modes(self.state.probe)
        return residual

    def batch_step(self, index: torch.Tensor, update_probe: bool) -> torch.Tensor:
        """Update object (and probe) from the frames ``index``; returns their squared residual."""
        state, pad = self.state, physics.SUBPIXEL_PAD
        a_o, g_o, a_p, g_p = self.weights()
        corner, frac = self.split(index)
        obj_patches = physics.patches(state.object, corner, frac, self.size, pad)
        psi = physics.exit_waves(state.probe, obj_patches)
        far = self.propagator.forward(psi)
        amp = physics.model_amplitude(far)
        measured = self.amplitudes[index]
        residual = physics.amplitude_residual(amp, measured, self.mask)
        factor = physics.amplitude_projection_factor(amp, measured, self.mask)
        dpsi = self.propagator.adjoint(far * factor.unsqueeze(1))

        probe_power = state.probe.real.square().sum(0) + state.probe.imag.square().sum(0)
        if index.numel() == 1:
            denom_o = (1 - g_o) * probe_power + g_o * probe_power.max()
        else:
            illum = physics.extract_adjoint(probe_power.expand(index.numel(), -1, -1), corner, state.object.shape)
            denom_o = physics.extract((1 - g_o) * illum, corner, self.size) + g_o * probe_power.max()
        step_o = physics.exit_waves_adjoint_object(state.probe, dpsi) * (a_o / denom_o.clamp(min=TINY))

        if update_probe:
            obj_power = (obj_patches.real.square() + obj_patches.imag.square()).sum(0)
            denom_p = (1 - g_p) * obj_power + g_p * obj_power.max()
            state.probe += physics.exit_waves_adjoint_probe(obj_patches, dpsi) * (a_p / denom_p.clamp(min=TINY))
            self.constrain_probe_power()
        state.object += physics.patches_adjoint(step_o, corner, frac, state.object.shape, pad)
        return residual


class EPIE(PIE):
    """ePIE, Maiden & Rodenburg, Ultramicroscopy 109 (2009) 1256, eqs. (6)-(7)."""

    name = EngineName.EPIE

    def weights(self) -> tuple[float, float, float, float]:
        return step_weights("epie", self.options.alpha, self.options.beta)


class RPIE(PIE):
    """rPIE, Maiden, Johnson & Li, Optica 4 (2017) 736, eq. (22)."""

    name = EngineName.RPIE

    def weights(self) -> tuple[float, float, float, float]:
        return step_weights("rpie", self.options.alpha, self.options.beta)
