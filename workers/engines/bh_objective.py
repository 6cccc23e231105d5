"""Gradient, bilinear Hessian and Hessian operator of the ptychographic objective (seed 002).

Bilinear-Hessian ptychography (seed 002, Secs. 4.1-4.3 and Appendix I; formulas restated in
shared/specs/BH.md). For the joint variable x = (object psi, probe q, positions r) and the
model M(x)_r = q * S_r psi (``workers.physics.patches``, modes along MODE),

    f(x) = F(D M(x)),  F(Psi) = sum mask * phi(|Psi|, d),  |Psi| = sqrt(sum_k |Psi_k|^2),

with phi = (|Psi| - d)^2 (Gaussian amplitude objective, d = sqrt(I)) or
phi = |Psi|^2 - I log |Psi|^2 (Poisson likelihood). Both have the form

    grad F(Psi)  = 2 (1 - a) Psi
    H_F(D1, D2)  = 2 sum [ (1 - a) Re sum_k D1_k conj(D2_k) + b Re(l . D1) Re(l . D2) ],  l . D = sum_k conj(l_k) D_k

with l = Psi / |Psi| and (a, b) = (d / |Psi|, d / |Psi|) (Gaussian; BH.md's w) or
(I / |Psi|^2, 2 I / |Psi|^2) (Poisson). The chain rule gives (BH.md):

    grad_psi f = sum_r S_r*(chi_r),  grad_q f = sum_r conj(S_r psi) Phi_r,  grad_r f = <chi_r, T_r(psi; e_j)>,
    H_f(s1, s2) = <Phi, d2M(s1, s2)> + H_F(D dM(s1), D dM(s2)),

Phi = D*(grad F), chi_r = sum_k conj(q_k) Phi_rk, T / T2 the shift derivatives in
``workers.physics``. All inner products are real: <a, b> = Re sum a conj(b).

A direction's ``Tangent`` (its patch change p(s) and detector-plane change D dM(s)) costs one
patch operator and one propagation; every Hessian value along it then costs none. With the
positions fixed the model is bilinear in (q, psi), so ``Objective.advance`` carries the model
and a tangent to x + alpha s with one more propagation instead of recomputing them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from workers import physics

Tensor = torch.Tensor
ObjectiveKind = Literal["gaussian", "poisson"]


@dataclass
class Joint:
    """A point or a direction of the joint variable.

    obj : (H, W) complex; probe : (MODE, M, M) complex; pos : (FRAME, 2) real, positions of a
    point (object-array pixels) or position offsets of a direction.
    """

    obj: Tensor
    probe: Tensor
    pos: Tensor

    def dot(self, other: Joint) -> Tensor:
        """Real inner product <self, other> summed over the three blocks (a float64 scalar)."""
        return torch.stack([_real_dot(a, b).double() for a, b in self._pairs(other)]).sum()

    def __add__(self, other: Joint) -> Joint:
        return Joint(self.obj + other.obj, self.probe + other.probe, self.pos + other.pos)

    def scaled(
        self, obj: Tensor | float, probe: Tensor | float | None = None, pos: Tensor | float | None = None
    ) -> Joint:
        """Blocks multiplied by (obj, probe, pos); one number scales all three."""
        probe = obj if probe is None else probe
        pos = obj if pos is None else pos
        return Joint(self.obj * obj, self.probe * probe, self.pos * pos)

    def _pairs(self, other: Joint) -> list[tuple[Tensor, Tensor]]:
        return [(self.obj, other.obj), (self.probe, other.probe), (self.pos, other.pos.to(self.pos.dtype))]


@dataclass
class Tangent:
    """First-order change of the model along a direction s at a point x.

    patch : (FRAME, M, M) p(s) = S dpsi + T(psi; drho);  far : (FRAME, MODE, M, M) D dM(s).
    """

    patch: Tensor
    far: Tensor

    def combine(self, a: float, other: Tangent | None = None, b: float = 0.0) -> Tangent:
        """The tangent of a s + b s' (tangents are linear in the direction)."""
        if other is None:
            return Tangent(self.patch * a, self.far * a)
        return Tangent(
            torch.mul(self.patch, a).add_(other.patch, alpha=b), torch.mul(self.far, a).add_(other.far, alpha=b)
        )


@dataclass
class Model:
    """The model at a point: ramp (``physics.patch_ramp`` or None), patches S psi, far D M(x)."""

    ramp: Tensor | None
    patches: Tensor
    far: Tensor


@dataclass
class Linearization:
    """The objective at a point x, and what its derivatives there reuse.

    corner, frac : (FRAME, 2) integer corners and sub-pixel parts (frac None: integer-only patches);
    ramp : the sub-pixel multiplier of ``physics.patches`` (None with frac);
    patches : (FRAME, M, M) S_r psi;  far : (FRAME, MODE, M, M) Psi = D M(x);  inv : 1 / |Psi| (so l = Psi inv);
    wa, wb : (FRAME, M, M) mask * (1 - a) and mask * b;  phi : (FRAME, MODE, M, M) D*(grad F);
    chi : (FRAME, M, M) sum_k conj(q_k) Phi_k;  shifts : (FRAME, 2, M, M) T_r(psi; e_j) or None;
    value : F;  residual : sum mask (|Psi| - d)^2 (the loss every engine reports).
    """

    x: Joint
    corner: Tensor
    frac: Tensor | None
    ramp: Tensor | None
    patches: Tensor
    far: Tensor
    inv: Tensor
    wa: Tensor
    wb: Tensor
    phi: Tensor
    chi: Tensor
    shifts: Tensor | None
    value: Tensor
    residual: Tensor


class Objective:
    """f(x) = F(D M(x)) of the module docstring over all frames (full batch), any device and dtype.

    amplitudes : (FRAME, M, M) measured sqrt(I), zero frequency at [0, 0]; mask : (M, M) or None.
    """

    def __init__(
        self,
        propagator: physics.Propagator,
        amplitudes: Tensor,
        mask: Tensor | None,
        kind: ObjectiveKind = "gaussian",
        pad: int = 2,
        eps: float = 1e-8,
    ) -> None:
        self.propagator, self.amplitudes, self.mask = propagator, amplitudes, mask
        self.kind, self.pad, self.eps = kind, pad, eps
        self.size = int(amplitudes.shape[-1])

    def model(self, x: Joint, shifts: bool, subpixel: bool = True) -> Model:
        """The model at x from scratch: one patch operator and one propagation."""
        corner, frac = self._split(x, shifts, subpixel)
        ramp = None if frac is None else physics.patch_ramp(frac, self.size, self.pad)
        patches = physics.patches(x.obj, corner, frac, self.size, self.pad, ramp)
        return Model(ramp, patches, self.propagator.forward(physics.exit_waves(x.probe, patches)))

    def _split(self, x: Joint, shifts: bool, subpixel: bool) -> tuple[Tensor, Tensor | None]:
        corner, _ = physics.split_positions(x.pos)
        return corner, (x.pos - corner).to(x.obj.real.dtype) if (subpixel or shifts) else None

    def linearize(self, x: Joint, shifts: bool, subpixel: bool = True, model: Model | None = None) -> Linearization:
        """Evaluate f at x; ``shifts``: also T_r(psi; e_j) (needed when positions vary).

        ``model``: the model at x when already known (``advance``); otherwise computed here.
        """
        corner, frac = self._split(x, shifts, subpixel)
        model = self.model(x, shifts, subpixel) if model is None else model
        patches, far = model.patches, model.far
        power = physics.intensity(far)
        amp = power.sqrt()
        d = self.amplitudes.to(amp.dtype)
        inv = 1 / (amp + self.eps)
        residual = physics.amplitude_residual(amp, d, self.mask)
        if self.kind == "gaussian":
            a = d * inv
            b = a
            value = residual
        else:
            intensity, j = d.square(), power + self.eps
            a = intensity / j
            b = 2 * intensity * power / j.square()
            value = ((power - intensity * torch.log(j)) * self._mask()).sum()
        wa, wb = (1 - a) * self._mask(), b * self._mask()
        phi = self.propagator.adjoint(2 * wa.unsqueeze(1) * far)
        chi = physics.exit_waves_adjoint_object(x.probe, phi)
        shift = physics.patches_shift_gradient(x.obj, corner, frac, self.size, self.pad) if shifts else None
        return Linearization(x, corner, frac, model.ramp, patches, far, inv, wa, wb, phi, chi, shift, value, residual)

    def _mask(self) -> Tensor | float:
        return 1.0 if self.mask is None else self.mask

    def _shift_dot(self, lin: Linearization, u: Tensor) -> Tensor:
        """Re sum_pixels u_r conj(T_r(psi; e_j)) -> (FRAME, 2): the position part of an adjoint."""
        assert lin.shifts is not None
        return torch.real(u.unsqueeze(1) * lin.shifts.conj()).sum((-2, -1)).to(lin.x.pos.dtype)

    def gradient(self, lin: Linearization) -> Joint:
        """grad f = (sum S*(chi), sum conj(S psi) Phi, <chi, T(psi; e_j)>); positions 0 without shifts."""
        x = lin.x
        g_obj = physics.patches_adjoint(lin.chi, lin.corner, lin.frac, tuple(x.obj.shape), self.pad, lin.ramp)
        g_probe = physics.exit_waves_adjoint_probe(lin.patches, lin.phi)
        g_pos = self._shift_dot(lin, lin.chi) if lin.shifts is not None else torch.zeros_like(x.pos)
        return Joint(g_obj, g_probe, g_pos)

    def patch_derivative(self, lin: Linearization, s: Joint) -> Tensor:
        """p(s) = S dpsi + T(psi; drho): the change of the patches (FRAME, M, M) along s."""
        p = physics.patches(s.obj, lin.corner, lin.frac, self.size, self.pad, lin.ramp)
        if lin.shifts is not None:
            p = p + (lin.shifts * s.pos.to(lin.frac.dtype)[..., None, None]).sum(1)
        return p

    def model_derivative(self, lin: Linearization, s: Joint, p: Tensor) -> Tensor:
        """dM(s) = dq S psi + q p(s) (FRAME, MODE, M, M), sample plane, with p = p(s)."""
        return physics.exit_waves(s.probe, lin.patches) + physics.exit_waves(lin.x.probe, p)

    def tangent(self, lin: Linearization, s: Joint) -> Tangent:
        """p(s) and D dM(s): one patch operator and one propagation."""
        p = self.patch_derivative(lin, s)
        return Tangent(p, self.propagator.forward(self.model_derivative(lin, s, p)))

    def advance(
        self, lin: Linearization, s: Joint, t: Tangent, alpha: float, probe_moves: bool = True
    ) -> tuple[Model, Tangent]:
        """The model at x' = x + alpha s and the tangent of s there; positions fixed.

        M is bilinear in (q, psi): with c = D(dq S dpsi), D M(x') = D M(x) + alpha D dM(s) + alpha^2 c
        and D dM'(s) = D dM(s) + 2 alpha c; one propagation (none when the probe is held fixed,
        ``probe_moves`` False, so that dq = 0).
        """
        patches = torch.add(lin.patches, t.patch, alpha=alpha)
        far = torch.add(lin.far, t.far, alpha=alpha)
        if not probe_moves:
            return Model(lin.ramp, patches, far), t
        cross = self.propagator.forward(physics.exit_waves(s.probe, t.patch))
        far.add_(cross, alpha=alpha * alpha)
        return Model(lin.ramp, patches, far), Tangent(t.patch, torch.add(t.far, cross, alpha=2 * alpha))

    def data_hessian_apply(self, lin: Linearization, v: Tensor, positive: bool = False) -> Tensor:
        """G(v) with H_F(v, w) = <G(v), w>: 2 [ (1 - a) v + b l Re(l . v) ] (FRAME, MODE, M, M), detector plane.

        ``positive``: the tangential curvature (1 - a) clamped at 0, the radial one (1 - a + b > 0) kept:
        a positive semi-definite (Gauss-Newton-like) curvature.
        """
        wa, wr = self._weights(lin, positive)
        return 2 * (wa.unsqueeze(1) * v + (wr * self._radial(lin, v)).unsqueeze(1) * lin.far)

    def _weights(self, lin: Linearization, positive: bool) -> tuple[Tensor, Tensor]:
        """(1 - a) and b / |Psi|^2 (the radial weight on Re(conj(Psi) . v)), mask applied."""
        if not positive:
            return lin.wa, lin.wb * lin.inv.square()
        wa = lin.wa.clamp(min=0)
        return wa, (lin.wb + lin.wa - wa) * lin.inv.square()

    @staticmethod
    def _radial(lin: Linearization, v: Tensor) -> Tensor:
        """Re sum_k conj(Psi_k) v_k (FRAME, M, M)."""
        return (lin.far.real * v.real + lin.far.imag * v.imag).sum(1)

    def hessian_matrix(
        self, lin: Linearization, dirs: list[Joint], tangents: list[Tangent] | None = None, positive: bool = False
    ) -> Tensor:
        """Gram matrix (k, k) float64 of H_f(dirs[i], dirs[j]); ``tangents`` of ``dirs`` when known.

        ``positive``: the positive semi-definite curvature instead (H_F with (1 - a) >= 0, no d2M term),
        for step lengths where H_f is indefinite far from the solution. The probe part of
        <Phi, d2M> is <dq_i, sum_r conj(p_j) Phi_r>: probe-sized once the frame sums are taken.
        """
        tangents = [self.tangent(lin, s) for s in dirs] if tangents is None else tangents
        wa, wr = self._weights(lin, positive)
        proj = [self._radial(lin, t.far) for t in tangents]
        weighted = [wa.unsqueeze(1) * t.far for t in tangents]
        sums = [physics.exit_waves_adjoint_probe(t.patch, lin.phi) for t in tangents] if not positive else []
        pairs = [(i, j) for i in range(len(dirs)) for j in range(i, len(dirs))]
        entries = []
        for i, j in pairs:
            h = 2 * (_real_dot(weighted[i], tangents[j].far) + _real_dot(wr * proj[i], proj[j]))
            if not positive:
                h = h + _real_dot(dirs[i].probe, sums[j]) + _real_dot(dirs[j].probe, sums[i])
                h = h + self._shift_curvature(lin, dirs[i], dirs[j])
            entries.append(h.double())
        values = torch.stack(entries).cpu()  # one device-to-host transfer for the whole matrix
        out = torch.zeros((len(dirs), len(dirs)), dtype=torch.float64)
        for (i, j), h in zip(pairs, values, strict=True):
            out[i, j] = out[j, i] = h
        return out

    def _shift_curvature(self, lin: Linearization, s1: Joint, s2: Joint) -> Tensor | float:
        """The position part of <Phi, d2M(s1, s2)>: <chi, T(dpsi1; drho2) + T(dpsi2; drho1) + T2(psi; drho1, drho2)>."""
        if lin.shifts is None or lin.frac is None:
            return 0.0
        c, f, m, pad = lin.corner, lin.frac, self.size, self.pad
        r1, r2 = s1.pos.to(f.dtype), s2.pos.to(f.dtype)
        t = physics.patches_shift_derivative(s1.obj, c, f, m, pad, r2)
        t = t + physics.patches_shift_derivative(s2.obj, c, f, m, pad, r1)
        t = t + physics.patches_shift_derivative(lin.x.obj, c, f, m, pad, r1, r2)
        return _real_dot(lin.chi, t)

    def hessian(self, lin: Linearization, s1: Joint, s2: Joint) -> Tensor:
        """The bilinear Hessian H_f(s1, s2) (float64 scalar)."""
        return self.hessian_matrix(lin, [s1, s2])[0, 1]

    def hessian_operator(self, lin: Linearization, s: Joint) -> Joint:
        """H_f(s, .) as an element of the joint space (seed 002, Thm. 4.3 with App. I's position terms).

        With R = D* G(D dM(s)), chi_R = sum_k conj(q_k) R_k + conj(dq_k) Phi_k:
        object  = sum_r S_r*(chi_R) + T_r(.; drho)*(chi);
        probe   = sum_r conj(S psi) R + conj(p(s)) Phi;
        positions_j = <chi_R, T(psi; e_j)> + <chi, T(dpsi; e_j) + T2(psi; drho, e_j)>.
        """
        x, pad = lin.x, self.pad
        t = self.tangent(lin, s)
        r = self.propagator.adjoint(self.data_hessian_apply(lin, t.far))
        chi_r = physics.exit_waves_adjoint_object(x.probe, r) + physics.exit_waves_adjoint_object(s.probe, lin.phi)
        shape = tuple(x.obj.shape)
        h_obj = physics.patches_adjoint(chi_r, lin.corner, lin.frac, shape, pad, lin.ramp)
        h_probe = physics.exit_waves_adjoint_probe(lin.patches, r) + physics.exit_waves_adjoint_probe(t.patch, lin.phi)
        if lin.shifts is None or lin.frac is None:
            return Joint(h_obj, h_probe, torch.zeros_like(x.pos))
        c, f = lin.corner, lin.frac
        drho = s.pos.to(f.dtype)
        h_obj = h_obj + physics.patches_shift_derivative_adjoint(lin.chi, c, f, shape, pad, drho)
        ts = physics.patches_shift_gradient(s.obj, c, f, self.size, pad)
        ts = ts + physics.patches_shift_gradient(x.obj, c, f, self.size, pad, drho)
        h_pos = self._shift_dot(lin, chi_r) + torch.real(lin.chi.unsqueeze(1) * ts.conj()).sum((-2, -1)).to(x.pos.dtype)
        return Joint(h_obj, h_probe, h_pos)


def _real_dot(a: Tensor, b: Tensor) -> Tensor:
    """<a, b> = Re sum a conj(b) (scalar), one pass without temporaries."""
    if a.is_complex():
        a, b = torch.view_as_real(a.resolve_conj()), torch.view_as_real(b.resolve_conj())
    return torch.dot(a.reshape(-1), b.reshape(-1).to(a.dtype))
