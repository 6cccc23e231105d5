"""BH-GD, BH-CG and BH-QN: second-order ptychography with the bilinear Hessian (seed 002).

Each iteration (one "epoch") uses every frame received so far. At x_j with g = grad f(x_j)
(``bh_objective``) and the block preconditioner P = diag(c_psi^2, c_q^2, c_rho^2) of seed
002 Appendix II (its eqs. 34-37 in the original variables), the direction is

* BH-GD: s = -P g;
* BH-CG: s = -P g + beta s_prev, Daniel's beta = H(P g, s_prev) / H(s_prev, s_prev);
* BH-QN: s ~ -H^-1 g by a few preconditioned CG iterations on the Hessian operator
  (App. II's last equation), the first outer iterations by BH-CG;

and the step is the exact minimiser of the local quadratic, alpha = -<g, s> / H(s, s);
x_{j+1} = x_j + alpha s for all blocks (no line search, no step parameter).

Automatic scaling (an option replaces a block's by a constant c^2, as in the paper): App. II
with a diagonal C, the reciprocal of each block's Gauss-Newton curvature, regularised like
rPIE's denominator: 1 / (w + 0.1 max w) with w = sum_r S_r*|q|^2 per object pixel,
sum_r |S_r psi|^2 per probe pixel, and sum |q T_r(psi; e_j)|^2 per frame and axis, so that a
unit step changes every block's model by a comparable amount.

Positions (App. I): sub-pixel offsets refined in the same iteration; the mean of the
position gradient and of the Hessian operator's position block is removed, which pins the
global shift (f is nearly invariant under it). Each iteration moves a position by at most
``max_position_step`` pixels. The CG history resets when frames are added, the object grows
or the set of refined blocks changes; where H(s, s) <= 0 (far from the solution the
Hessian can be indefinite) the iteration restarts along -P g, its step length from the
positive semi-definite part of the curvature (``Objective.hessian_matrix(positive=True)``).
Where f rose over the last step (the quadratic model was poor) that step is halved, up to
five times, before the next iteration, and the history resets: f never increases.
"""

from __future__ import annotations

import torch

from workers.engines.base import SUBPIXEL_PAD, Engine
from workers.engines.bh_objective import Joint, Linearization, Objective
from workers.engines.options import BHCGOptions, BHGDOptions, BHOptions, BHQNOptions, EngineName

Scale = torch.Tensor | float
REGULARISATION = 0.1
MAX_HALVINGS = 5


class BH(Engine):
    """Shared BH iteration; subclasses choose the search direction."""

    options: BHOptions
    _previous: Joint | None = None
    _key: tuple[object, ...] | None = None
    _last: tuple[float, Joint, bool, bool] | None = None

    def positions_changed(self) -> None:
        """Frames were added or adopted: the CG history and the last objective value no longer apply."""
        super().positions_changed()
        self._previous = None
        self._last = None

    def epoch_step(self, update_probe: bool) -> torch.Tensor:
        state, opts = self.state, self.options
        refine = opts.refine_positions and self.epoch >= opts.position_refinement_start
        key = (tuple(state.object.shape), self.n_frames, update_probe, refine)
        if key != self._key:
            self._previous, self._last, self._key = None, None, key
        objective = Objective(
            self.propagator, self.amplitudes[: self.n_frames], self.mask, opts.objective, SUBPIXEL_PAD
        )
        lin = self._linearize(objective, refine)
        scales = self.scales(lin, update_probe, refine)
        g = _pin(objective.gradient(lin))
        s, hss = self.direction(objective, lin, g, scales)
        gs = float(g.dot(s))
        if not hss > 0 or not gs < 0:
            s = _precondition(g, scales).scaled(-1.0)
            gs, hss = float(g.dot(s)), float(objective.hessian_matrix(lin, [s], positive=True)[0, 0])
        step = s.scaled(-gs / max(hss, 1e-300))
        self._previous = s
        self._last = (float(lin.value), self._apply(step, update_probe, refine), update_probe, refine)
        return lin.residual

    def _linearize(self, objective: Objective, refine: bool) -> Linearization:
        """Linearise at the current state; if f rose since the last iteration, halve that step first (up to 5x)."""
        state = self.state
        lin = objective.linearize(Joint(state.object, state.probe, state.positions), refine, self.subpixel)
        for _ in range(MAX_HALVINGS):
            if self._last is None or not float(lin.value) > self._last[0]:
                break
            value, step, update_probe, refined = self._last
            back = self._apply(step.scaled(-0.5), update_probe, refined)
            self._previous = None
            self._last = (value, back.scaled(-1.0), update_probe, refined)
            lin = objective.linearize(Joint(state.object, state.probe, state.positions), refine, self.subpixel)
        return lin

    def _apply(self, step: Joint, update_probe: bool, refine: bool) -> Joint:
        """x <- x + step on the blocks being refined; returns the step taken (positions limited)."""
        self.state.object = self.state.object + step.obj
        if update_probe:
            self.state.probe = self.state.probe + step.probe
        if refine:
            return Joint(step.obj, step.probe, self._move_positions(step.pos))
        return step

    def _move_positions(self, step: torch.Tensor) -> torch.Tensor:
        """Add ``step`` (FRAME, 2), at most ``max_position_step`` per frame, keeping windows inside the object.

        Returns the change actually made.
        """
        state, limit = self.state, self.options.max_position_step
        norm = step.norm(dim=1, keepdim=True)
        if bool((norm > limit).any()):
            step = step * (limit / norm.clamp(min=limit))
            self._previous = None
        hi = torch.tensor(state.object.shape, dtype=step.dtype, device=step.device) - self.size - SUBPIXEL_PAD - 1
        before = state.positions
        state.positions = torch.minimum(torch.clamp(before + step, min=SUBPIXEL_PAD + 1), hi)
        Engine.positions_changed(self)
        return state.positions - before

    def scales(self, lin: Linearization, update_probe: bool, refine: bool) -> tuple[Scale, Scale, Scale]:
        """Preconditioner P = (c_psi^2, c_q^2, c_rho^2); 0 for blocks held fixed (module docstring)."""
        opts, x = self.options, lin.x
        probe_power = (x.probe.real.square() + x.probe.imag.square()).sum(0)
        illum = torch.zeros(x.obj.shape, dtype=probe_power.dtype, device=x.obj.device)
        rows = lin.corner[:, 0, None, None] + torch.arange(self.size, device=illum.device)[:, None]
        cols = lin.corner[:, 1, None, None] + torch.arange(self.size, device=illum.device)[None, :]
        illum.index_put_((rows, cols), probe_power.expand(len(lin.corner), -1, -1), accumulate=True)
        c_obj: Scale = _square(opts.object_scale) or 1 / (illum + REGULARISATION * illum.max())
        c_probe: Scale = 0.0
        if update_probe:
            patch_power = (lin.patches.real.square() + lin.patches.imag.square()).sum(0)
            c_probe = _square(opts.probe_scale) or 1 / (patch_power + REGULARISATION * patch_power.max())
        c_pos: Scale = 0.0
        if refine and lin.shifts is not None:
            t_power = ((lin.shifts.real.square() + lin.shifts.imag.square()) * probe_power).sum((-2, -1))
            floor = REGULARISATION * t_power.max() + torch.finfo(t_power.dtype).tiny
            c_pos = _square(opts.position_scale) or 1 / (t_power + floor)
        return c_obj, c_probe, c_pos

    def direction(
        self, objective: Objective, lin: Linearization, g: Joint, scales: tuple[Scale, Scale, Scale]
    ) -> tuple[Joint, float]:
        """The search direction s and H(s, s); BH-GD here, overridden by BH-CG and BH-QN."""
        s = _precondition(g, scales).scaled(-1.0)
        return s, float(objective.hessian_matrix(lin, [s])[0, 0])

    def conjugate_direction(
        self, objective: Objective, lin: Linearization, g: Joint, scales: tuple[Scale, Scale, Scale]
    ) -> tuple[Joint, float]:
        """BH-CG: s = -P g + beta s_prev, beta = H(P g, s_prev) / H(s_prev, s_prev), at the current point."""
        if self._previous is None:
            return BH.direction(self, objective, lin, g, scales)
        pg, prev = _precondition(g, scales), self._previous
        h = objective.hessian_matrix(lin, [pg, prev])
        if not h[1, 1] > 0:
            return pg.scaled(-1.0), float(h[0, 0])
        beta = float(h[0, 1] / h[1, 1])
        return pg.scaled(-1.0) + prev.scaled(beta), float(h[0, 0] - 2 * beta * h[0, 1] + beta**2 * h[1, 1])


class BHGD(BH):
    """BH-GD: preconditioned gradient steps with the Newton step length (seed 002, Sec. 3)."""

    name = EngineName.BH_GD
    options_model = BHGDOptions


class BHCG(BH):
    """BH-CG: nonlinear CG with Daniel's beta and Newton step lengths (seed 002, Sec. 3)."""

    name = EngineName.BH_CG
    options_model = BHCGOptions

    def direction(
        self, objective: Objective, lin: Linearization, g: Joint, scales: tuple[Scale, Scale, Scale]
    ) -> tuple[Joint, float]:
        return self.conjugate_direction(objective, lin, g, scales)


class BHQN(BH):
    """BH-QN: approximate Newton directions H s = -g by inner preconditioned CG (seed 002, App. II)."""

    name = EngineName.BH_QN
    options_model = BHQNOptions
    options: BHQNOptions
    _qn_start: int = 0

    def positions_changed(self) -> None:
        super().positions_changed()
        self._qn_start = self.epoch + self.options.cg_iterations

    def direction(
        self, objective: Objective, lin: Linearization, g: Joint, scales: tuple[Scale, Scale, Scale]
    ) -> tuple[Joint, float]:
        if self.epoch < self._qn_start:
            return self.conjugate_direction(objective, lin, g, scales)
        s = g.scaled(0.0)
        r = g.scaled(-1.0)
        z = _precondition(r, scales)
        p, rz = z, float(r.dot(z))
        for _ in range(self.options.inner_iterations):
            hp = _pin(objective.hessian_operator(lin, p))
            php = float(p.dot(hp))
            if not php > 0:
                break
            a = rz / php
            s, r = s + p.scaled(a), r + hp.scaled(-a)
            z = _precondition(r, scales)
            rz_new = float(r.dot(z))
            p, rz = z + p.scaled(rz_new / rz), rz_new
        if not float(s.dot(s)) > 0:
            return BH.direction(self, objective, lin, g, scales)
        return s, float(objective.hessian_matrix(lin, [s])[0, 0])


def _pin(v: Joint) -> Joint:
    """Remove the mean of the position block: steps never move the scan as a whole."""
    return Joint(v.obj, v.probe, v.pos - v.pos.mean(0, keepdim=True))


def _precondition(g: Joint, scales: tuple[Scale, Scale, Scale]) -> Joint:
    """P g with the global position shift removed again (P is per frame)."""
    return _pin(g.scaled(*scales))


def _square(c: float | None) -> float | None:
    return None if c is None else c * c
