"""Joint ptychography + X-ray fluorescence (seed 004): one objective, by Adam (autodiff) or BH-CG."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from workers import physics, xrf_model
from workers.engines.base import BatchedEngine, orthogonalize_modes
from workers.engines.bh_objective import Objective
from workers.engines.options import EngineName, JointXRFOptions
from workers.errors import DataError
from workers.fluorescence import MAP_UNITS, Fluorescence, energy_kev, mass_attenuation
from workers.xrf_bh import JointBHCG, JointObjective, Point

Tensor = torch.Tensor


class JointXRF(BatchedEngine):
    """Minimise F = sum_j || |D(P S_j O)| - sqrt(I_j) ||^2 / sum I + alpha sum_{e,j} rho(f_ej, D_ej) / norm.

    f_ej = k_e sum_x |P(x)|^2 u_e(x + r_j) are the expected fluorescence counts (seed eq. 2.1) of the
    absorptions u_e = mu_e w_e (``workers.xrf_model``), O = link(base, u) ties the object to the maps
    (seed sec. 2.2; ``link="none"`` fits O freely and u to the fluorescence alone: the separate
    inversions), rho is Gaussian or Poisson. Unknowns: the base (phase or real part), u >= 0
    (projected after every step) and the probe; Adam steps per mini-batch of frames with their
    counts, or (``solver="bh-cg"``) one BH-CG iteration on all frames per epoch (``workers.xrf_bh``).
    alpha: GradNorm at the first epoch, ||grad_u F_ptycho|| / ||grad_u F_fluor|| on the shared
    absorptions (seed sec. 2.3, beta = 1), fixed afterwards. When the object grows (streaming), the parameters are
    re-read from the state (lossless: the state holds O and w) and Adam's moments restart.
    """

    name = EngineName.JOINT_XRF
    options: JointXRFOptions
    alpha: float | None = None
    _opt: torch.optim.Adam | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.alpha = self.options.alpha
        self.fluorescence_history: list[float] = []
        self._shape: tuple[int, ...] = ()

    def _counts(self) -> tuple[Fluorescence, Tensor, Tensor, np.ndarray]:
        """The fluorescence so far: its record, counts (ELEMENT, FRAME), scale k_e (ELEMENT,), mu_e."""
        flu = self.fluorescence
        if flu is None:
            raise DataError("joint-xrf: the scan has no fluorescence counts (xrf/ group or MAPS maps; see README)")
        energy = energy_kev(self.geometry.wavelength)
        mu = mass_attenuation(flu.elements, energy)
        scale = torch.as_tensor(flu.sensitivities(energy) / mu, dtype=torch.float32, device=self.device)
        return flu, torch.as_tensor(flu.counts, dtype=torch.float32, device=self.device), scale, mu

    def _parameters(self, flu: Fluorescence, mu: np.ndarray) -> None:
        """(Re)build base, u and the optimiser from the state when the object is new or has grown."""
        state = self.state
        if self._opt is not None and self._shape == tuple(state.object.shape):
            return
        link = self.options.link
        if all(e in state.elements for e in flu.elements):
            w = torch.stack([state.elements[e] for e in flu.elements])
            u = w * torch.as_tensor(mu, dtype=torch.float32, device=self.device)[:, None, None]
        else:
            u = torch.zeros((len(flu.elements), *state.object.shape), device=self.device)
        if link == "none":
            self.base = state.object
        else:
            base, a = xrf_model.unlinked(link, state.object, len(flu.elements))
            self.base = base.contiguous()
            if not all(e in state.elements for e in flu.elements):
                u = a
        self.u = u.contiguous()
        lr = self.options.lr
        probe_lr = lr * float(state.probe.abs().square().mean().sqrt())
        groups = [{"params": [self.base, self.u], "lr": lr}, {"params": [state.probe], "lr": probe_lr}]
        self._opt = torch.optim.Adam(groups)
        self._shape = tuple(state.object.shape)
        self._cg = JointBHCG()

    def _object(self) -> Tensor:
        link = self.options.link
        return self.base if link == "none" else xrf_model.linked_object(link, self.base, self.u)

    def _terms(self, index: Tensor, counts: Tensor, scale: Tensor, obj: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
        """Summed ptychographic and fluorescence residuals of the frames ``index`` at object ``obj``, maps ``u``."""
        corner, frac = self.split(index)
        patches = physics.patches(obj, corner, frac, self.size, physics.SUBPIXEL_PAD)
        far = self.propagator.forward(physics.exit_waves(self.state.probe, patches))
        ptycho = physics.amplitude_residual(physics.model_amplitude(far), self.amplitudes[index], self.mask)
        model = xrf_model.expected_counts(xrf_model.illumination(self.state.probe), u, corner, frac, scale)
        return ptycho, xrf_model.fluorescence_residual(model, counts[:, index], self.options.fluorescence_loss)

    def _intensity(self) -> float:
        """sum I over all frames (1 for frames of zeros: a closed shutter must not divide by 0)."""
        return self.total_intensity if self.total_intensity > 0 else 1.0

    def _norm(self, counts: Tensor) -> float:
        return float(counts.square().sum() if self.options.fluorescence_loss == "gaussian" else counts.sum()) or 1.0

    def gradnorm_alpha(self, counts: Tensor, scale: Tensor) -> float:
        """alpha = ||grad F_ptycho|| / ||grad_u F_fluor|| at the current state (seed sec. 2.3), x alpha_scale.

        GradNorm balances the tasks' gradients on their shared variables: the absorptions u through
        the link (grad_u F_ptycho); with ``link="none"`` nothing is shared and the object stands in.
        """
        link = self.options.link
        linked = link != "none"
        base = self.base.detach().clone().requires_grad_(not linked)
        u_p = self.u.detach().clone().requires_grad_(linked)
        u_f = self.u.detach().clone().requires_grad_(True)
        for index in self.batches():
            obj = xrf_model.linked_object(link, base, u_p) if linked else base
            ptycho, fluor = self._terms(index, counts, scale, obj, u_f)
            (ptycho / self._intensity() + fluor / self._norm(counts)).backward()
        g_ptycho = u_p.grad if linked else base.grad
        g_fluor = float(torch.linalg.vector_norm(u_f.grad)) if u_f.grad is not None else 0.0
        ratio = float(torch.linalg.vector_norm(g_ptycho)) / g_fluor if g_ptycho is not None and g_fluor > 0 else 1.0
        return ratio * self.options.alpha_scale

    def epoch_step(self, update_probe: bool) -> torch.Tensor:
        state = self.state
        flu, counts, scale, mu = self._counts()
        self._parameters(flu, mu)
        if self.alpha is None:
            self.alpha = self.gradnorm_alpha(counts, scale)
        if self.options.solver == "bh-cg":
            return self._bh_epoch(update_probe, flu, counts, scale, mu)
        opt, norm = self._opt, self._norm(counts)
        assert opt is not None
        residual = torch.zeros((), device=self.device)
        fluor_total = torch.zeros((), device=self.device)
        params = [self.base, self.u]
        for p in params:
            p.requires_grad_(True)
        state.probe.requires_grad_(update_probe)
        try:
            for index in self.batches():
                ptycho, fluor = self._terms(index, counts, scale, self._object(), self.u)
                opt.zero_grad(set_to_none=True)
                (ptycho / self._intensity() + self.alpha * fluor / norm).backward()
                opt.step()
                with torch.no_grad():
                    self.u.clamp_(min=0)
                residual += ptycho.detach()
                fluor_total += fluor.detach()
        finally:
            for p in (*params, state.probe):
                p.requires_grad_(False)
        if update_probe:
            state.probe.copy_(orthogonalize_modes(state.probe))
        self._publish(flu, mu)
        self.fluorescence_history.append(float(fluor_total) / norm)
        return residual

    def _bh_epoch(
        self, update_probe: bool, flu: Fluorescence, counts: Tensor, scale: Tensor, mu: np.ndarray
    ) -> torch.Tensor:
        """One BH-CG iteration on all frames (``workers.xrf_bh``); returns the residual where it linearised."""
        assert self.alpha is not None
        state, n = self.state, self.n_frames
        ptycho = Objective(self.propagator, self.amplitudes[:n], self.mask, "gaussian", physics.SUBPIXEL_PAD)
        objective = JointObjective(
            ptycho, self.options.link, state.positions, counts, scale, self.alpha, self._intensity()
        )
        new, at = self._cg.step(objective, Point(self.base, self.u, state.probe), update_probe)
        with torch.no_grad():
            self.base.copy_(new.base)
            self.u.copy_(new.u)
            if update_probe:
                state.probe.copy_(new.probe)
        self._publish(flu, mu)
        self.fluorescence_history.append(float(at.residual.square().sum()) / self._norm(counts))
        return at.lin.residual

    def _publish(self, flu: Fluorescence, mu: np.ndarray) -> None:
        """Write the object and the element maps (g/cm^2) into the state."""
        with torch.no_grad():
            if self.options.link != "none":
                self.state.object.copy_(self._object())
            for e, name in enumerate(flu.elements):
                self.state.elements[name] = (self.u[e] / float(mu[e])).clone()

    def report(self) -> dict[str, Any]:
        flu = self.fluorescence
        return {
            "xrf_link": self.options.link,
            "xrf_alpha": float(self.alpha) if self.alpha is not None else float("nan"),
            "xrf_fluorescence_loss": self.options.fluorescence_loss,
            "xrf_elements": ",".join(flu.elements) if flu is not None else "",
            "element_units": MAP_UNITS,
        }

    def snapshot(self) -> dict[str, np.ndarray]:
        out = super().snapshot()
        out["fluorescence_loss"] = np.asarray(self.fluorescence_history)
        return out
