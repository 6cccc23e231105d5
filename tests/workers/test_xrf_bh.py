"""BH-CG of the joint objective: gradient and bilinear Hessian through the links against autograd (float64)."""

from __future__ import annotations

import pytest
import torch

from workers import physics, xrf_model
from workers.engines.bh_objective import Objective
from workers.xrf_bh import JointObjective, Point


def _problem(link: xrf_model.Link) -> tuple[JointObjective, Point, list[Point]]:
    """6 frames of 16 px (sub-pixel positions) on a 30 px object, 2 elements, a point near the data; eps = 0 in
    the amplitude objective (its 1 / (|Psi| + eps) would differ from autograd by ~1e-7)."""
    g = torch.Generator().manual_seed(5)
    d = torch.float64
    positions = torch.tensor([[3.2, 4.0], [3.0, 11.5], [9.7, 4.1], [10.0, 10.0], [6.5, 7.3], [11.0, 12.4]], dtype=d)
    true_probe = torch.complex(
        torch.randn(1, 16, 16, generator=g, dtype=d), torch.randn(1, 16, 16, generator=g, dtype=d)
    )
    if link == "none":
        base = torch.complex(torch.rand(30, 30, generator=g, dtype=d), torch.rand(30, 30, generator=g, dtype=d))
    else:
        base = torch.rand(30, 30, generator=g, dtype=d)
    u = torch.rand(2, 30, 30, generator=g, dtype=d)
    scale = torch.tensor([3.0, 0.7], dtype=d)
    corner, frac = physics.split_positions(positions)
    obj = base if link == "none" else xrf_model.linked_object(link, base, u)
    far = physics.FarField().forward(physics.exit_waves(true_probe, physics.patches(obj, corner, frac, 16, 2)))
    amplitudes = physics.intensity(far).sqrt() * 1.1
    counts = xrf_model.expected_counts(xrf_model.illumination(true_probe), u, corner, frac, scale) * 0.9
    ptycho = Objective(physics.FarField(), amplitudes, None, "gaussian", physics.SUBPIXEL_PAD, eps=0.0)
    objective = JointObjective(ptycho, link, positions, counts, scale, 0.6, float(amplitudes.square().sum()))

    def rand_like(t: torch.Tensor) -> torch.Tensor:
        if t.is_complex():
            return torch.complex(torch.randn(t.shape, generator=g, dtype=d), torch.randn(t.shape, generator=g, dtype=d))
        return torch.randn(t.shape, generator=g, dtype=d)

    x = Point(base + 0.1 * rand_like(base), u + 0.1 * rand_like(u).abs(), true_probe + 0.1 * rand_like(true_probe))
    return objective, x, [Point(rand_like(base), rand_like(u), rand_like(true_probe)) for _ in range(2)]


def _value(objective: JointObjective, x: Point) -> torch.Tensor:
    """The same objective written with autograd-able torch ops (an independent path to its value)."""
    obj = objective.obj(x.base, x.u)
    patches = physics.patches(obj, objective.corner, objective.frac, 16, physics.SUBPIXEL_PAD)
    amp = physics.intensity(physics.FarField().forward(physics.exit_waves(x.probe, patches))).sqrt()
    ptycho = (amp - objective.ptycho.amplitudes).square().sum() / objective.intensity
    r = objective.counts_of(xrf_model.illumination(x.probe), x.u) - objective.counts
    return ptycho + objective.alpha * r.square().sum() / objective.norm


@pytest.mark.parametrize("link", ["linear", "physical", "none"])
def test_gradient_and_hessian_against_autograd(link: xrf_model.Link) -> None:
    objective, x, (s1, s2) = _problem(link)
    st = objective.evaluate(x)
    assert st.value == pytest.approx(float(_value(objective, x)), rel=1e-10)
    g = objective.gradient(st)

    t = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    value = _value(
        objective, Point(*(a + t[0] * b + t[1] * c for a, b, c in zip(x.parts(), s1.parts(), s2.parts(), strict=True)))
    )
    (grad,) = torch.autograd.grad(value, t, create_graph=True)
    hess = torch.stack([torch.autograd.grad(grad[i], t, retain_graph=True)[0] for i in range(2)])
    grad = grad.detach()
    assert g.dot(s1) == pytest.approx(float(grad[0]), rel=1e-8)
    assert g.dot(s2) == pytest.approx(float(grad[1]), rel=1e-8)
    h = objective.hessian_matrix(st, [s1, s2])
    assert torch.allclose(h, hess.detach(), rtol=1e-7)
