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
class Linearization:
    """The objective at a point x, and what its derivatives there reuse.

    corner, frac : (FRAME, 2) integer corners and sub-pixel parts (frac None: integer-only patches);
    patches : (FRAME, M, M) S_r psi;  unit : (FRAME, MODE, M, M) l = Psi / |Psi|;
    wa, wb : (FRAME, M, M) mask * (1 - a) and mask * b;  phi : (FRAME, MODE, M, M) D*(grad F);
    chi : (FRAME, M, M) sum_k conj(q_k) Phi_k;  shifts : (FRAME, 2, M, M) T_r(psi; e_j) or None;
    value : F;  residual : sum mask (|Psi| - d)^2 (the loss every engine reports).
    """

    x: Joint
    corner: Tensor
    frac: Tensor | None
    patches: Tensor
    unit: Tensor
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

    def linearize(self, x: Joint, shifts: bool, subpixel: bool = True) -> Linearization:
        """Evaluate f at x; ``shifts``: also T_r(psi; e_j) (needed when positions vary)."""
        corner, _ = physics.split_positions(x.pos)
        frac = (x.pos - corner).to(x.obj.real.dtype) if (subpixel or shifts) else None
        patches = physics.patches(x.obj, corner, frac, self.size, self.pad)
        far = self.propagator.forward(physics.exit_waves(x.probe, patches))
        power = physics.intensity(far)
        amp = power.sqrt()
        d = self.amplitudes.to(amp.dtype)
        unit = far / (amp + self.eps).unsqueeze(1)
        if self.kind == "gaussian":
            a = d / (amp + self.eps)
            b = a
            value = ((amp - d).square() * self._mask()).sum()
        else:
            intensity, j = d.square(), power + self.eps
            a = intensity / j
            b = 2 * intensity * power / j.square()
            value = ((power - intensity * torch.log(j)) * self._mask()).sum()
        wa, wb = (1 - a) * self._mask(), b * self._mask()
        phi = self.propagator.adjoint(2 * wa.unsqueeze(1) * far)
        chi = physics.exit_waves_adjoint_object(x.probe, phi)
        shift = physics.patches_shift_gradient(x.obj, corner, frac, self.size, self.pad) if shifts else None
        residual = physics.amplitude_residual(amp, d, self.mask)
        return Linearization(x, corner, frac, patches, unit, wa, wb, phi, chi, shift, value, residual)

    def _mask(self) -> Tensor | float:
        return 1.0 if self.mask is None else self.mask

    def _shift_dot(self, lin: Linearization, u: Tensor) -> Tensor:
        """Re sum_pixels u_r conj(T_r(psi; e_j)) -> (FRAME, 2): the position part of an adjoint."""
        assert lin.shifts is not None
        return torch.real(u.unsqueeze(1) * lin.shifts.conj()).sum((-2, -1)).to(lin.x.pos.dtype)

    def gradient(self, lin: Linearization) -> Joint:
        """grad f = (sum S*(chi), sum conj(S psi) Phi, <chi, T(psi; e_j)>); positions 0 without shifts."""
        x = lin.x
        g_obj = physics.patches_adjoint(lin.chi, lin.corner, lin.frac, tuple(x.obj.shape), self.pad)
        g_probe = physics.exit_waves_adjoint_probe(lin.patches, lin.phi)
        g_pos = self._shift_dot(lin, lin.chi) if lin.shifts is not None else torch.zeros_like(x.pos)
        return Joint(g_obj, g_probe, g_pos)

    def patch_derivative(self, lin: Linearization, s: Joint) -> Tensor:
        """p(s) = S dpsi + T(psi; drho): the change of the patches (FRAME, M, M) along s."""
        p = physics.patches(s.obj, lin.corner, lin.frac, self.size, self.pad)
        if lin.shifts is not None:
            p = p + (lin.shifts * s.pos.to(lin.frac.dtype)[..., None, None]).sum(1)
        return p

    def model_derivative(self, lin: Linearization, s: Joint, p: Tensor | None = None) -> Tensor:
        """dM(s) = dq S psi + q p(s) (FRAME, MODE, M, M), sample plane."""
        p = self.patch_derivative(lin, s) if p is None else p
        return physics.exit_waves(s.probe, lin.patches) + physics.exit_waves(lin.x.probe, p)

    def data_hessian_apply(self, lin: Linearization, v: Tensor, positive: bool = False) -> Tensor:
        """G(v) with H_F(v, w) = <G(v), w>: 2 [ (1 - a) v + b l Re(l . v) ] (FRAME, MODE, M, M), detector plane.

        ``positive``: the tangential curvature (1 - a) clamped at 0, the radial one (1 - a + b > 0) kept:
        a positive semi-definite (Gauss-Newton-like) curvature.
        """
        proj = torch.real((lin.unit.conj() * v).sum(1))
        wa, wb = lin.wa, lin.wb
        if positive:
            wa, wb = wa.clamp(min=0), wb + wa - wa.clamp(min=0)
        return 2 * (wa.unsqueeze(1) * v + (wb * proj).unsqueeze(1) * lin.unit)

    def curvature_term(self, lin: Linearization, s1: Joint, s2: Joint, p1: Tensor, p2: Tensor) -> Tensor:
        """<Phi, d2M(s1, s2)>, d2M = dq1 p2 + dq2 p1 + q (T(dpsi1; drho2) + T(dpsi2; drho1) + T2(psi; drho1, drho2))."""
        out = _real_dot(lin.phi, physics.exit_waves(s1.probe, p2) + physics.exit_waves(s2.probe, p1))
        if lin.shifts is not None and lin.frac is not None:
            c, f, m, pad = lin.corner, lin.frac, self.size, self.pad
            r1, r2 = s1.pos.to(f.dtype), s2.pos.to(f.dtype)
            t = physics.patches_shift_derivative(s1.obj, c, f, m, pad, r2)
            t = t + physics.patches_shift_derivative(s2.obj, c, f, m, pad, r1)
            t = t + physics.patches_shift_derivative(lin.x.obj, c, f, m, pad, r1, r2)
            out = out + _real_dot(lin.chi, t)
        return out

    def hessian_matrix(self, lin: Linearization, dirs: list[Joint], positive: bool = False) -> Tensor:
        """Gram matrix (k, k) float64 of H_f(dirs[i], dirs[j]); one D per direction.

        ``positive``: the positive semi-definite curvature instead (H_F with (1 - a) >= 0, no d2M term),
        for step lengths where H_f is indefinite far from the solution.
        """
        ps = [self.patch_derivative(lin, s) for s in dirs]
        far = [self.propagator.forward(self.model_derivative(lin, s, p)) for s, p in zip(dirs, ps, strict=True)]
        k = len(dirs)
        out = torch.zeros((k, k), dtype=torch.float64)
        for i in range(k):
            gi = self.data_hessian_apply(lin, far[i], positive)
            for j in range(i, k):
                h = _real_dot(gi, far[j])
                if not positive:
                    h = h + self.curvature_term(lin, dirs[i], dirs[j], ps[i], ps[j])
                out[i, j] = out[j, i] = h.double().cpu()
        return out

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
        p = self.patch_derivative(lin, s)
        r = self.propagator.adjoint(
            self.data_hessian_apply(lin, self.propagator.forward(self.model_derivative(lin, s, p)))
        )
        chi_r = physics.exit_waves_adjoint_object(x.probe, r) + physics.exit_waves_adjoint_object(s.probe, lin.phi)
        shape = tuple(x.obj.shape)
        h_obj = physics.patches_adjoint(chi_r, lin.corner, lin.frac, shape, pad)
        h_probe = physics.exit_waves_adjoint_probe(lin.patches, r) + physics.exit_waves_adjoint_probe(p, lin.phi)
        if lin.shifts is None or lin.frac is None:
            return Joint(h_obj, h_probe, torch.zeros_like(x.pos))
        c, f = lin.corner, lin.frac
        drho = s.pos.to(f.dtype)
        h_obj = h_obj + physics.patches_shift_derivative_adjoint(lin.chi, c, f, shape, pad, drho)
        t = physics.patches_shift_gradient(s.obj, c, f, self.size, pad)
        t = t + physics.patches_shift_gradient(x.obj, c, f, self.size, pad, drho)
        h_pos = self._shift_dot(lin, chi_r) + torch.real(lin.chi.unsqueeze(1) * t.conj()).sum((-2, -1)).to(x.pos.dtype)
        return Joint(h_obj, h_probe, h_pos)


def _real_dot(a: Tensor, b: Tensor) -> Tensor:
    """<a, b> = Re sum a conj(b) (scalar)."""
    return torch.real((a * b.conj()).sum())
