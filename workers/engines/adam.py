"""Autodiff baseline: the same forward model and amplitude objective, minimised by Adam."""

from __future__ import annotations

import numpy as np
import torch

from workers import physics
from workers.engines.base import BatchedEngine, orthogonalize_modes
from workers.engines.options import AdamOptions, EngineName


class Adam(BatchedEngine):
    """Minimise sum_r || |D(P S_r O)| - sqrt(I_r) ||^2 over O and P with torch.optim.Adam.

    One Adam step per mini-batch; gradients come from autograd through ``workers.physics``
    (its modulus has a zero gradient at a model zero, where a plain sqrt gave NaN from the
    first step when the start probe's far field had exact zeros, e.g. a pupil-limited probe
    guess from the file). The probe's learning rate is the object's times the probe's RMS
    amplitude sqrt(mean |P|^2): Adam moves every pixel by about its rate, and at the peak
    amplitude (the former scale) the dark part of the window took steps of 5% of the peak
    from noise alone, so sum |P|^2 grew (x1.7 in 100 epochs on a noisy scan) while the
    object shrank and the loss rose. The optimiser is rebuilt when the object grows.
    """

    name = EngineName.ADAM
    options: AdamOptions
    _opt: torch.optim.Adam | None = None
    _opt_origin: np.ndarray

    def _optimizer(self) -> torch.optim.Adam:
        """The optimiser over the current object and probe; when the object has grown, its Adam
        moments are carried over into the grown array (new pixels start with zero moments)."""
        state = self.state
        old = self._opt
        if old is not None and old.param_groups[0]["params"][0] is state.object:
            return old
        lr = self.options.lr
        probe_lr = lr * float(state.probe.abs().square().mean().sqrt())
        self._opt = torch.optim.Adam([{"params": [state.object], "lr": lr}, {"params": [state.probe], "lr": probe_lr}])
        if old is not None:
            self._carry_moments(old)
        self._opt_origin = state.origin.copy()
        return self._opt

    def _carry_moments(self, old: torch.optim.Adam) -> None:
        (old_obj,), (old_probe,) = (g["params"] for g in old.param_groups)
        new_obj, new_probe = self.state.object, self.state.probe
        r, c = (self.state.origin - self._opt_origin).astype(int)
        h, w = old_obj.shape
        moments = old.state.get(old_obj, {})
        if moments:
            grown = {"step": moments["step"]}
            for key in ("exp_avg", "exp_avg_sq"):
                grown[key] = torch.zeros_like(new_obj, dtype=moments[key].dtype)
                grown[key][r : r + h, c : c + w] = moments[key]
            self._opt.state[new_obj] = grown
        if old_probe in old.state:
            self._opt.state[new_probe] = old.state[old_probe]

    def epoch_step(self, update_probe: bool) -> torch.Tensor:
        state = self.state
        opt = self._optimizer()
        residual = torch.zeros((), device=self.device)
        state.object.requires_grad_(True)
        state.probe.requires_grad_(update_probe)
        try:
            for index in self.batches():
                corner, frac = self.split(index)
                obj_patches = physics.patches(state.object, corner, frac, self.size, physics.SUBPIXEL_PAD)
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
