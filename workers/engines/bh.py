"""BH-GD, BH-CG and BH-QN: second-order ptychography with the bilinear Hessian (seed 002).

Each iteration (one "epoch") uses every frame received so far. At x_j with g = grad f(x_j)
(``bh_objective``) and the preconditioner P of seed 002 Appendix II (its eqs. 34-37 in the
original variables), the direction is

* BH-GD: s = -P g;
* BH-CG: s = -P g + beta s_prev, Daniel's beta = H(P g, s_prev) / H(s_prev, s_prev);
* BH-QN: s ~ -H^-1 g by a few preconditioned CG iterations on the Hessian operator
  (App. II's last equation), the first outer iterations by BH-CG;

and the step is the exact minimiser of the local quadratic, alpha = -<g, s> / H(s, s);
x_{j+1} = x_j + alpha s for all blocks (no line search, no step parameter).

Scaling: App. II's change of variables with a diagonal C per block, P = C^2 the reciprocal of
each block's Gauss-Newton curvature, regularised like rPIE's denominator: 1 / (w + 0.1 max w)
with w = sum_r S_r*|q|^2 per object pixel, sum_r |S_r psi|^2 per probe pixel, and
sum |q T_r(psi; e_j)|^2 per frame and axis, so that a unit step changes every block's model by a
comparable amount. It is recomputed each iteration (a fixed one measured no better; one scalar
per block, the paper's c_psi, c_q, c_rho, converges far slower in the far field); an option
replaces a block's by a constant c^2.

Cost (positions fixed): the model M is bilinear in (q, psi), so the model at x_{j+1} and the
previous direction's D dM at x_{j+1} follow from this iteration's quantities and one more
propagation (``Objective.advance``). An iteration costs D* and S* for the gradient, S and D for
the tangent of P g, and D for that bilinear term: 3 propagations and 2 patch operators, against
2 and 2 for a gradient evaluation. The carried model is recomputed every ``REFRESH`` iterations.

Positions (App. I): sub-pixel offsets refined in the same iteration (everything then recomputed
each iteration); the mean of the position gradient and of the Hessian operator's position
block is removed, which pins the global shift (f is nearly invariant under it). Each iteration
moves a position by at most ``max_position_step`` pixels. The CG history resets when frames are
added, the object grows, the state is changed from outside, or the set of refined blocks
changes; where H(s, s) <= 0 (far from the solution the Hessian can be indefinite) the iteration
restarts along -P g, its step length from the positive semi-definite part of the curvature
(``Objective.hessian_matrix(positive=True)``). Where f rose over the last step (the quadratic
model was poor) that step is halved, up to five times, before the next iteration, and the
history resets.
"""

from __future__ import annotations

import torch

from workers import physics
from workers.engines.base import Engine
from workers.engines.bh_objective import Joint, Linearization, Model, Objective, Tangent
from workers.engines.options import BHOptions, BHQNOptions, EngineName

Scale = torch.Tensor | float
Direction = tuple[Joint, Tangent, float]
REGULARISATION = 0.1
MAX_HALVINGS = 5
REFRESH = 50  # carried model recomputed every 50 iterations (measured drift: 6e-7 relative after 100)


class BH(Engine):
    """Shared BH iteration; subclasses choose the search direction."""

    options: BHOptions
    _previous: tuple[Joint, Tangent | None] | None = None
    _model: Model | None = None
    _advanced: int = 0
    _key: tuple[object, ...] | None = None
    _tensors: tuple[torch.Tensor, ...] = ()
    _last: tuple[float, Joint, bool, bool] | None = None

    def positions_changed(self) -> None:
        """Frames were added or adopted: the CG history, the carried model and the last value no longer apply."""
        super().positions_changed()
        self._previous, self._model, self._last = None, None, None

    def epoch_step(self, update_probe: bool) -> torch.Tensor:
        opts = self.options
        refine = opts.refine_positions and self.epoch >= opts.position_refinement_start
        if not self._unchanged(update_probe, refine):
            self._previous, self._model, self._last = None, None, None
        objective = Objective(
            self.propagator, self.amplitudes[: self.n_frames], self.mask, opts.objective, physics.SUBPIXEL_PAD
        )
        lin = self._linearize(objective, refine)
        scales = self.scales(lin, update_probe, refine)
        g = _pin(objective.gradient(lin))
        s, t, hss = self.direction(objective, lin, g, scales)
        gs = float(g.dot(s))
        if not hss > 0 or not gs < 0:
            s = _precondition(g, scales).scaled(-1.0)
            t = objective.tangent(lin, s)
            gs, hss = float(g.dot(s)), float(objective.hessian_matrix(lin, [s], [t], positive=True)[0, 0])
        alpha = -gs / max(hss, 1e-300)
        if refine:
            self._previous, self._model = (s, None), None
        else:
            model, t = objective.advance(lin, s, t, alpha, update_probe)
            self._previous, self._model, self._advanced = (s, t), model, self._advanced + 1
        step = self._apply(s.scaled(alpha), update_probe, refine)
        self._last = (float(lin.value), step, update_probe, refine)
        self._key, self._tensors = self._state_key(update_probe, refine)
        return lin.residual

    def _state_key(self, update_probe: bool, refine: bool) -> tuple[tuple[object, ...], tuple[torch.Tensor, ...]]:
        """What the carried history depends on: frames, refined blocks, and the state tensors with their
        in-place versions (so that a state changed from outside, or by another stage, is noticed)."""
        tensors = (self.state.object, self.state.probe, self.state.positions)
        return (self.n_frames, update_probe, refine, *(t._version for t in tensors)), tensors

    def _unchanged(self, update_probe: bool, refine: bool) -> bool:
        key, tensors = self._state_key(update_probe, refine)
        same = len(tensors) == len(self._tensors) and all(a is b for a, b in zip(tensors, self._tensors, strict=True))
        return same and key == self._key

    def _linearize(self, objective: Objective, refine: bool) -> Linearization:
        """Linearise at the current state; if f rose since the last iteration, halve that step first (up to 5x).

        The model (S psi, D M) carried by ``Objective.advance`` is used when valid, and recomputed
        from the state every ``REFRESH`` iterations so that rounding cannot accumulate.
        """
        if self._advanced >= REFRESH:
            self._model = None
        if self._model is None:
            self._advanced = 0
        lin = objective.linearize(self._point(), refine, self.subpixel, self._model)
        for _ in range(MAX_HALVINGS):
            if self._last is None or not float(lin.value) > self._last[0]:
                break
            value, step, update_probe, refined = self._last
            back = self._apply(step.scaled(-0.5), update_probe, refined)
            self._previous, self._model, self._advanced = None, None, 0
            self._last = (value, back.scaled(-1.0), update_probe, refined)
            lin = objective.linearize(self._point(), refine, self.subpixel)
        return lin

    def _point(self) -> Joint:
        return Joint(self.state.object, self.state.probe, self.state.positions)

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
        hi = (
            torch.tensor(state.object.shape, dtype=step.dtype, device=step.device)
            - self.size
            - physics.SUBPIXEL_PAD
            - 1
        )
        before = state.positions
        state.positions = torch.minimum(torch.clamp(before + step, min=physics.SUBPIXEL_PAD + 1), hi)
        Engine.positions_changed(self)
        return state.positions - before

    def scales(self, lin: Linearization, update_probe: bool, refine: bool) -> tuple[Scale, Scale, Scale]:
        """Preconditioner P = (c_psi^2, c_q^2, c_rho^2); 0 for blocks held fixed (module docstring)."""
        opts, x = self.options, lin.x
        probe_power = (x.probe.real.square() + x.probe.imag.square()).sum(0)
        illum = physics.extract_adjoint(probe_power.expand(len(lin.corner), -1, -1), lin.corner, tuple(x.obj.shape))
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
    ) -> Direction:
        """The search direction s, its tangent and H(s, s); BH-GD here, overridden by BH-CG and BH-QN."""
        s = _precondition(g, scales).scaled(-1.0)
        t = objective.tangent(lin, s)
        return s, t, float(objective.hessian_matrix(lin, [s], [t])[0, 0])

    def conjugate_direction(
        self, objective: Objective, lin: Linearization, g: Joint, scales: tuple[Scale, Scale, Scale]
    ) -> Direction:
        """BH-CG: s = -P g + beta s_prev, beta = H(P g, s_prev) / H(s_prev, s_prev), at the current point."""
        if self._previous is None:
            return BH.direction(self, objective, lin, g, scales)
        prev, t_prev = self._previous
        t_prev = objective.tangent(lin, prev) if t_prev is None else t_prev
        pg = _precondition(g, scales)
        t_pg = objective.tangent(lin, pg)
        h = objective.hessian_matrix(lin, [pg, prev], [t_pg, t_prev])
        if not h[1, 1] > 0:
            return pg.scaled(-1.0), t_pg.combine(-1.0), float(h[0, 0])
        beta = float(h[0, 1] / h[1, 1])
        s = pg.scaled(-1.0) + prev.scaled(beta)
        return s, t_pg.combine(-1.0, t_prev, beta), float(h[0, 0] - 2 * beta * h[0, 1] + beta**2 * h[1, 1])


class BHGD(BH):
    """BH-GD: preconditioned gradient steps with the Newton step length (seed 002, Sec. 3)."""

    name = EngineName.BH_GD


class BHCG(BH):
    """BH-CG: nonlinear CG with Daniel's beta and Newton step lengths (seed 002, Sec. 3)."""

    name = EngineName.BH_CG

    def direction(
        self, objective: Objective, lin: Linearization, g: Joint, scales: tuple[Scale, Scale, Scale]
    ) -> Direction:
        return self.conjugate_direction(objective, lin, g, scales)


class BHQN(BH):
    """BH-QN: approximate Newton directions H s = -g by inner preconditioned CG (seed 002, App. II)."""

    name = EngineName.BH_QN
    options: BHQNOptions
    _qn_start: int = 0

    def positions_changed(self) -> None:
        super().positions_changed()
        self._qn_start = self.epoch + self.options.cg_iterations

    def direction(
        self, objective: Objective, lin: Linearization, g: Joint, scales: tuple[Scale, Scale, Scale]
    ) -> Direction:
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
        t = objective.tangent(lin, s)
        return s, t, float(objective.hessian_matrix(lin, [s], [t])[0, 0])


def _pin(v: Joint) -> Joint:
    """Remove the mean of the position block: steps never move the scan as a whole."""
    return Joint(v.obj, v.probe, v.pos - v.pos.mean(0, keepdim=True))


def _precondition(g: Joint, scales: tuple[Scale, Scale, Scale]) -> Joint:
    """P g with the global position shift removed again (P is per frame)."""
    return _pin(g.scaled(*scales))


def _square(c: float | None) -> float | None:
    return None if c is None else c * c
