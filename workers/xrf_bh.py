"""BH-CG for the joint ptychography + fluorescence objective (seed 004 solved the seed-002 way).

Variables x = (base, u, probe): base (H, W) the phase (physical), real part x (linear) or the whole
complex object (link "none"), u (ELEMENT, H, W) the absorptions mu_e w_e, probe (MODE, M, M). With
O = O(base, u) (``workers.xrf_model``) the objective is

    f(x) = F_p(O, P) / sum I + alpha sum_{e,j} (A_e(|P|^2, u)_j - D_ej)^2 / sum D^2,

F_p the Gaussian amplitude objective of ``workers.engines.bh_objective`` (its gradient and bilinear
Hessian are reused: F_p is bilinear in (P, O)) and A the counts operator, bilinear in (|P|^2, u).
Through the link, dO(s) = dz(s) (linear: dz = -1/2 sum s_u + i s_base) or O dz(s) (physical, with
d2O(s1, s2) = O dz1 dz2), so H_f(s1, s2) = H_p(dO1 + dP1, dO2 + dP2) + <grad_O F_p, d2O(s1, s2)>
+ alpha H_fluor(s1, s2), H_fluor = 2 [ <df1, df2> + <r, d2f(s1, s2)> ] / sum D^2 with
df(s) = A(|P|^2, s_u) + A(2 Re conj(P) s_P, u) and d2f = A(2 Re conj(P) s_P1, s_u2) +
A(2 Re conj(P) s_P2, s_u1) + A(2 Re conj(s_P1) s_P2, u). Each step minimises the quadratic
model on the span of the blocks (base, u, probe) of the preconditioned gradient and of the previous
step (conjugate directions per block; groups with no curvature between them, e.g. object and maps
with ``link="none"``, are solved apart), with the object-block preconditioner of seed 002
(1 / (illumination + 10% of its peak)) on base and u; u >= 0 is projected after every step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workers import physics, xrf_model
from workers.engines.bh_objective import Joint, Linearization, Objective

Tensor = torch.Tensor
REGULARISATION = 0.1


@dataclass
class Point:
    """A point or direction: base (H, W), u (ELEMENT, H, W), probe (MODE, M, M)."""

    base: Tensor
    u: Tensor
    probe: Tensor

    def dot(self, other: Point) -> float:
        return float(sum(_dot(a, b) for a, b in zip(self.parts(), other.parts(), strict=True)))

    def parts(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.base, self.u, self.probe

    def combine(self, a: float, other: Point | None = None, b: float = 0.0) -> Point:
        if other is None:
            return Point(self.base * a, self.u * a, self.probe * a)
        return Point(*(x * a + y * b for x, y in zip(self.parts(), other.parts(), strict=True)))


@dataclass
class State:
    """The objective at a point, and what its derivatives reuse."""

    x: Point
    obj: Tensor
    lin: Linearization
    illum: Tensor
    residual: Tensor
    value: float


class JointObjective:
    """f(x) of the module docstring over all frames at fixed positions (``corner``, ``frac``)."""

    def __init__(
        self,
        ptycho: Objective,
        link: xrf_model.Link,
        positions: Tensor,
        counts: Tensor,
        scale: Tensor,
        alpha: float,
        intensity: float,
    ) -> None:
        self.ptycho, self.link, self.positions = ptycho, link, positions
        self.corner, _ = physics.split_positions(positions)
        frac = (positions - self.corner).to(counts.dtype)  # the positions' own precision, as bh_objective
        self.frac = frac if bool((frac.abs() > 1e-6).any()) else None
        self.counts, self.scale, self.alpha = counts, scale, alpha
        self.intensity, self.norm = intensity, float(counts.square().sum()) or 1.0

    def obj(self, base: Tensor, u: Tensor) -> Tensor:
        return base if self.link == "none" else xrf_model.linked_object(self.link, base, u)

    def counts_of(self, illum: Tensor, u: Tensor) -> Tensor:
        return xrf_model.expected_counts(illum, u, self.corner, self.frac, self.scale)

    def evaluate(self, x: Point) -> State:
        obj = self.obj(x.base, x.u)
        lin = self.ptycho.linearize(Joint(obj, x.probe, self.positions), shifts=False)
        illum = xrf_model.illumination(x.probe)
        r = self.counts_of(illum, x.u) - self.counts
        value = float(lin.value) / self.intensity + self.alpha * float(r.square().sum()) / self.norm
        return State(x, obj, lin, illum, r, value)

    def _dz(self, s: Point) -> Tensor:
        return torch.complex(-0.5 * s.u.sum(0), s.base)

    def d_obj(self, st: State, s: Point) -> Tensor:
        """dO(s) through the link."""
        if self.link == "none":
            return s.base
        return self._dz(s) if self.link == "linear" else st.obj * self._dz(s)

    def gradient(self, st: State) -> Point:
        g = self.ptycho.gradient(st.lin)
        g_obj, g_probe = g.obj / self.intensity, g.probe / self.intensity
        w = 2 * self.alpha / self.norm
        shape = tuple(st.obj.shape)
        g_u = w * xrf_model.expected_counts_adjoint(st.illum, st.residual, self.corner, self.frac, self.scale, shape)
        windows = self._weighted_patches(st.x.u, w * st.residual)
        g_probe = g_probe + 2 * windows * st.x.probe
        if self.link == "none":
            return Point(g_obj, g_u, g_probe)
        wz = g_obj if self.link == "linear" else g_obj * st.obj.conj()
        return Point(wz.imag, g_u - 0.5 * wz.real, g_probe)

    def _weighted_patches(self, u: Tensor, weights: Tensor) -> Tensor:
        """sum_{e,j} weights_ej k_e S_j u_e -> (M, M): the probe-plane adjoint of the counts in |P|^2."""
        m = self.ptycho.size
        out = torch.zeros((m, m), dtype=u.dtype, device=u.device)
        for e in range(u.shape[0]):
            p = physics.patches(u[e], self.corner, self.frac, self.ptycho.size, physics.SUBPIXEL_PAD)
            p = p.real if p.is_complex() else p
            out = out + (weights[e, :, None, None] * self.scale[e] * p).sum(0)
        return out

    def hessian_matrix(self, st: State, dirs: list[Point], positive: bool = False) -> Tensor:
        """Gram matrix (k, k) float64 of H_f(dirs[i], dirs[j])."""
        joints = [Joint(self.d_obj(st, s), s.probe, torch.zeros_like(self.positions)) for s in dirs]
        h = self.ptycho.hessian_matrix(st.lin, joints, positive=positive) / self.intensity
        if self.link == "physical" and not positive:
            g_obj = self.ptycho.gradient(st.lin).obj / self.intensity
            dz = [self._dz(s) for s in dirs]
            for i in range(len(dirs)):
                for j in range(i, len(dirs)):
                    h[i, j] += _dot(g_obj, st.obj * dz[i] * dz[j])
                    h[j, i] = h[i, j]
        d_illum = [2 * (st.x.probe.conj() * s.probe).real.sum(0) for s in dirs]
        df = [self.counts_of(st.illum, s.u) + self.counts_of(di, st.x.u) for s, di in zip(dirs, d_illum, strict=True)]
        w = 2 * self.alpha / self.norm
        for i in range(len(dirs)):
            for j in range(i, len(dirs)):
                value = _dot(df[i], df[j])
                if not positive:
                    cross = 2 * (dirs[i].probe.conj() * dirs[j].probe).real.sum(0)
                    d2f = self.counts_of(d_illum[i], dirs[j].u) + self.counts_of(d_illum[j], dirs[i].u)
                    value += _dot(st.residual, d2f + self.counts_of(cross, st.x.u))
                h[i, j] += w * value
                h[j, i] = h[i, j]
        return h


def preconditioner(objective: JointObjective, st: State, update_probe: bool) -> tuple[Tensor, Tensor]:
    """(object-plane scale (H, W), probe scale (M, M) or 0) as seed 002's automatic scaling."""
    power = st.illum.expand(len(objective.corner), -1, -1)
    illum = physics.extract_adjoint(power, objective.corner, tuple(st.obj.shape[-2:]))
    c_obj = 1 / (illum + REGULARISATION * illum.max())
    if not update_probe:
        return c_obj, torch.zeros(())
    patch_power = (st.lin.patches.real.square() + st.lin.patches.imag.square()).sum(0)
    return c_obj, 1 / (patch_power + REGULARISATION * patch_power.max())


class JointBHCG:
    """One BH-CG iteration per ``step``; remembers the previous step (its blocks span the next subspace)."""

    def __init__(self) -> None:
        self.previous: Point | None = None

    def step(self, objective: JointObjective, x: Point, update_probe: bool) -> tuple[Point, State]:
        """x + s, s minimising the quadratic model on the span of the blocks of -Cg and of the previous
        step (u then projected onto u >= 0), and the state at x (value, residuals)."""
        st = objective.evaluate(x)
        g = objective.gradient(st)
        c_obj, c_probe = preconditioner(objective, st, update_probe)
        s = Point(g.base * c_obj, g.u * c_obj, g.probe * c_probe).combine(-1.0)
        fresh = _blocks(s)
        dirs = fresh + ([] if self.previous is None else _blocks(self.previous))
        h = objective.hessian_matrix(st, dirs)
        rhs = -torch.tensor([g.dot(d) for d in dirs], dtype=torch.float64)
        lengths = torch.zeros(len(dirs), dtype=torch.float64)
        for group in _coupled(h):
            lengths[group] = _group_lengths(objective, st, dirs, h, rhs, group, len(fresh))
        step = Point(*(torch.zeros_like(t) for t in s.parts()))
        for d, a in zip(dirs, lengths.tolist(), strict=True):
            step = step.combine(1.0, d, a)
        new = x.combine(1.0, step, 1.0)
        new.u.clamp_(min=0)
        self.previous = step
        return new, st


def _blocks(s: Point) -> list[Point]:
    """The non-zero blocks of ``s`` (base, u, probe), each a point zero elsewhere: their scales differ
    (one length for all stalls the maps) and, with ``link="none"``, object and maps are separate
    problems that one conjugate direction would couple."""
    parts = s.parts()
    zero = [torch.zeros_like(t) for t in parts]
    return [
        Point(*(t if k == i else zero[k] for k, t in enumerate(parts)))
        for i in range(3)
        if bool(parts[i].abs().sum() > 0)
    ]


def _coupled(h: Tensor) -> list[list[int]]:
    """Index groups of ``h`` with no curvature between groups (exact zeros: no shared variable)."""
    groups: list[list[int]] = []
    for i in range(h.shape[0]):
        linked = [grp for grp in groups if any(bool(h[i, j] != 0) for j in grp)]
        merged = [i] + [j for grp in linked for j in grp]
        groups = [grp for grp in groups if grp not in linked] + [sorted(merged)]
    return groups


def _group_lengths(
    objective: JointObjective, st: State, dirs: list[Point], h: Tensor, rhs: Tensor, group: list[int], n_fresh: int
) -> Tensor:
    """Newton lengths on one group: H c = rhs with the exact curvature where positive definite, else
    the positive (Gauss-Newton) curvature, else on the group's current-gradient blocks alone."""
    for candidate in (group, [i for i in group if i < n_fresh]):
        if not candidate:
            continue
        for sub in (h[candidate][:, candidate], objective.hessian_matrix(st, [dirs[i] for i in candidate], True)):
            if bool(torch.all(torch.linalg.eigvalsh(sub) > 0)):
                out = torch.zeros(len(group), dtype=torch.float64)
                out[[group.index(i) for i in candidate]] = torch.linalg.solve(sub, rhs[candidate])
                return out
    return torch.zeros(len(group), dtype=torch.float64)


def _dot(a: Tensor, b: Tensor) -> float:
    """<a, b> = Re sum a conj(b)."""
    return float((a * b.conj()).real.sum() if a.is_complex() or b.is_complex() else (a * b).sum())
