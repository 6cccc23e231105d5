"""The joint ptychography + fluorescence forward model (seed 004), batched torch on any device.

Element maps enter as absorptions ``u_e = mu_e w_e`` (dimensionless; ``mu_e`` the mass
attenuation coefficient in cm^2/g, ``w_e`` the areal density in g/cm^2), so every unknown is O(1).

* Fluorescence (seed eq. 2.1, self-absorption neglected): counts_{e,j} = k_e sum_x |P(x)|^2 u_e(x + r_j)
  with ``k_e = s_e / mu_e`` (``workers.fluorescence``); the patch operator is ``physics.patches``.
* Links from (base, u) to the object, a = sum_e u_e:
  ``physical`` (the seed's future work): O = exp(-a / 2) exp(i base), base the phase;
  ``linear``   (seed sec. 2.2): the seed's z~ = x + i y with y = sum_e mu_e w_e in the gauge
  z~ = exp(-i pi / 2) O, y calibrated affinely on vacuum (O = 1: y = -1) and -log|O| = a / 2,
  i.e. y = a / 2 - 1: O = i z~ = (1 - a / 2) + i base, the weak-object linearisation of the
  physical link (equal to first order in a and the phase ``base``).
"""

from __future__ import annotations

from typing import Literal

import torch

from workers import physics

Tensor = torch.Tensor
Link = Literal["linear", "physical", "none"]


def illumination(probe: Tensor) -> Tensor:
    """Probe intensity sum_k |P_k|^2 (M, M) of probe modes (MODE, M, M)."""
    return (probe.real.square() + probe.imag.square()).sum(0)


def expected_counts(illum: Tensor, u: Tensor, corner: Tensor, frac: Tensor | None, scale: Tensor) -> Tensor:
    """Expected counts (ELEMENT, BATCH) = scale_e sum_x illum(x) u_e(x + r_j).

    illum : (M, M) real; u : (ELEMENT, H, W) real; corner, frac as in ``physics.patches``;
    scale : (ELEMENT,) counts per unit of ``u`` per photon.
    """
    size = illum.shape[-1]
    rows = []
    for e in range(u.shape[0]):
        p = physics.patches(u[e], corner, frac, size, physics.SUBPIXEL_PAD)
        rows.append((p.real if p.is_complex() else p).mul(illum).sum((-2, -1)))
    return torch.stack(rows) * scale[:, None]


def expected_counts_adjoint(
    illum: Tensor, values: Tensor, corner: Tensor, frac: Tensor | None, scale: Tensor, shape: tuple[int, int]
) -> Tensor:
    """Adjoint of ``expected_counts`` in ``u``: values (ELEMENT, BATCH) -> (ELEMENT, H, W)."""
    out = []
    for e in range(values.shape[0]):
        windows = values[e, :, None, None] * scale[e] * illum
        windows = windows if frac is None else torch.complex(windows, torch.zeros_like(windows))
        img = physics.patches_adjoint(windows, corner, frac, shape, physics.SUBPIXEL_PAD)
        out.append(img.real if img.is_complex() else img)
    return torch.stack(out)


def linked_object(link: Link, base: Tensor, u: Tensor) -> Tensor:
    """The object (H, W) complex64 that ``link`` makes of ``base`` (H, W) and absorptions ``u`` (ELEMENT, H, W)."""
    a = u.sum(0)
    if link == "linear":
        return torch.complex(1 - 0.5 * a, base)
    if link == "physical":
        return torch.polar(torch.exp(-0.5 * a), base)
    raise ValueError(f"link {link!r} builds no object")


def unlinked(link: Link, obj: Tensor, n_elements: int) -> tuple[Tensor, Tensor]:
    """(base, u) whose ``linked_object`` is nearest ``obj`` with u >= 0 split evenly among the elements."""
    if link == "linear":
        base, a = obj.imag, (2 - 2 * obj.real).clamp(min=0)
    else:
        base, a = obj.angle(), (-2 * obj.abs().clamp(min=1e-6).log()).clamp(min=0)
    return base.clone(), (a / n_elements).expand(n_elements, *a.shape).clone()


def fluorescence_residual(model: Tensor, counts: Tensor, kind: Literal["gaussian", "poisson"]) -> Tensor:
    """Gaussian: sum (f - D)^2; Poisson: the deviance/2 sum f - D + D log(D / f) (0 at f = D). Scalar."""
    if kind == "gaussian":
        return (model - counts).square().sum()
    f = model.clamp(min=1e-6)
    return (f - counts + torch.xlogy(counts, counts) - counts * f.log()).sum()
