"""Autodiff baseline: the same forward model and amplitude objective, minimised by Adam."""

from __future__ import annotations

import torch

from workers import physics
from workers.engines.base import SUBPIXEL_PAD, Engine, orthogonalize_modes
from workers.engines.options import AdamOptions, EngineName


class Adam(Engine):
    """Minimise sum_r || |D(P S_r O)| - sqrt(I_r) ||^2 over O and P with torch.optim.Adam.

    One Adam step per mini-batch; gradients come from autograd through ``workers.physics``.
    The probe's learning rate is the object's times the probe's peak amplitude, so both
    move by a similar relative amount. The optimiser is rebuilt when the object grows.
    """

    name = EngineName.ADAM
    options_model = AdamOptions
    options: AdamOptions
    _opt: torch.optim.Adam | None = None

    def _optimizer(self) -> torch.optim.Adam:
        state = self.state
        if self._opt is None or self._opt.param_groups[0]["params"][0] is not state.object:
            lr = self.options.lr
            probe_lr = lr * float(state.probe.abs().max())
            self._opt = torch.optim.Adam(
                [{"params": [state.object], "lr": lr}, {"params": [state.probe], "lr": probe_lr}]
            )
        return self._opt

    def epoch_step(self, update_probe: bool) -> torch.Tensor:
        state = self.state
        opt = self._optimizer()
        residual = torch.zeros((), device=self.device)
        state.object.requires_grad_(True)
        state.probe.requires_grad_(update_probe)
        try:
            for index in self.batches():
                corner, frac = self.split(index)
                obj_patches = physics.patches(state.object, corner, frac, self.size, SUBPIXEL_PAD)
                far = self.propagator.forward(physics.exit_waves(state.probe, obj_patches))
                loss = physics.amplitude_residual(physics.model_amplitude(far), self.amplitudes[index], self.mask)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                residual += loss.detach()
        finally:
            state.object.requires_grad_(False)
            state.probe.requires_grad_(False)
        if update_probe:
            state.probe.copy_(orthogonalize_modes(state.probe))
        return residual
