"""Operators: every forward/adjoint pair passes the dot-product test in float64; the data-term
gradient built from them matches autograd."""

from __future__ import annotations

import math

import pytest
import torch

from workers import physics

torch.manual_seed(0)
C128 = torch.complex128


def crandn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=C128)


def inner(a: torch.Tensor, b: torch.Tensor) -> float:
    """Real inner product Re sum(a conj(b))."""
    return float((a * b.conj()).real.sum())


def assert_adjoint(fwd, adj, x: torch.Tensor, y: torch.Tensor) -> None:  # type: ignore[no-untyped-def]
    lhs, rhs = inner(fwd(x), y), inner(x, adj(y))
    assert lhs == pytest.approx(rhs, rel=1e-10, abs=1e-10)


CORNERS = torch.tensor([[3, 4], [10, 2], [7, 7], [3, 4]])
FRACS = torch.tensor([[0.3, -0.2], [-0.5, 0.1], [0.0, 0.45], [0.25, 0.25]], dtype=torch.float64)


def test_extract_adjoint() -> None:
    assert_adjoint(
        lambda o: physics.extract(o, CORNERS, 8),
        lambda p: physics.extract_adjoint(p, CORNERS, (24, 20)),
        crandn(24, 20),
        crandn(4, 8, 8),
    )


@pytest.mark.parametrize("frac", [None, FRACS])
def test_patches_adjoint(frac: torch.Tensor | None) -> None:
    assert_adjoint(
        lambda o: physics.patches(o, CORNERS, frac, 8, 2),
        lambda p: physics.patches_adjoint(p, CORNERS, frac, (24, 20), 2),
        crandn(24, 20),
        crandn(4, 8, 8),
    )


def test_fourier_shift_adjoint_and_integer_shift() -> None:
    shift = torch.tensor([[1.5, -0.25], [2.0, 3.0]], dtype=torch.float64)
    assert_adjoint(
        lambda u: physics.fourier_shift(u, shift),
        lambda v: physics.fourier_shift(v, -shift),
        crandn(2, 16, 16),
        crandn(2, 16, 16),
    )
    u = crandn(1, 16, 16)
    moved = physics.fourier_shift(u, torch.tensor([[2.0, -3.0]], dtype=torch.float64))
    assert torch.allclose(moved, torch.roll(u, (2, -3), (-2, -1)), atol=1e-10)


def test_subpixel_patch_samples_shifted_object() -> None:
    """An object periodic over the padded window (8 + 2 * 2 px): S_r samples it exactly at r + x."""
    h = 36
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(h, dtype=torch.float64), indexing="ij")

    def field(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.exp(2j * math.pi * (y + 2 * x) / 12)

    pos = torch.tensor([[5.3, 7.6]], dtype=torch.float64)
    corner, frac = physics.split_positions(pos)
    patch = physics.patches(field(yy, xx), corner, frac.double(), 8, 2)
    ref = field(yy[:8, :8] + 5.3, xx[:8, :8] + 7.6)
    assert torch.allclose(patch[0], ref, atol=1e-9)


def test_far_field_adjoint_and_unitary() -> None:
    prop = physics.FarField()
    x = crandn(3, 2, 16, 16)
    assert_adjoint(prop.forward, prop.adjoint, x, crandn(3, 2, 16, 16))
    assert float(prop.forward(x).abs().square().sum()) == pytest.approx(float(x.abs().square().sum()), rel=1e-12)


def test_near_field_adjoint_and_unitary() -> None:
    prop = physics.NearField(wavelength=1e-10, distance=0.05, pixel_size=5e-7, size=16)
    x = crandn(3, 1, 16, 16)
    assert_adjoint(prop.forward, prop.adjoint, x, crandn(3, 1, 16, 16))
    assert float(prop.forward(x).abs().square().sum()) == pytest.approx(float(x.abs().square().sum()), rel=1e-6)


def test_exit_wave_adjoints() -> None:
    probe, patches, waves = crandn(3, 8, 8), crandn(4, 8, 8), crandn(4, 3, 8, 8)
    assert_adjoint(
        lambda o: physics.exit_waves(probe, o), lambda w: physics.exit_waves_adjoint_object(probe, w), patches, waves
    )
    assert_adjoint(
        lambda p: physics.exit_waves(p, patches), lambda w: physics.exit_waves_adjoint_probe(patches, w), probe, waves
    )


@pytest.mark.parametrize("near", [False, True])
def test_data_term_gradient_matches_autograd(near: bool) -> None:
    """grad_O F = -2 S*(sum_k conj(P_k) dpsi_k), grad_P F = -2 sum_r conj(O_r) dpsi_r with
    dpsi = D*(Psi (sqrt(I)/|Psi| - 1)): the PIE update directions are the negative gradient."""
    size, shape = 8, (24, 20)
    prop = physics.NearField(1e-10, 0.05, 5e-7, size) if near else physics.FarField()
    obj, probe = crandn(*shape).requires_grad_(), crandn(2, size, size).requires_grad_()
    measured = torch.rand(4, size, size, dtype=torch.float64) * 3
    mask = (torch.rand(size, size) > 0.1).double()

    far = prop.forward(physics.exit_waves(probe, physics.patches(obj, CORNERS, FRACS, size, 2)))
    amp = physics.model_amplitude(far)
    physics.amplitude_residual(amp, measured, mask).backward()

    with torch.no_grad():
        patches = physics.patches(obj, CORNERS, FRACS, size, 2)
        far = prop.forward(physics.exit_waves(probe, patches))
        factor = physics.amplitude_projection_factor(physics.model_amplitude(far), measured, mask, eps=0.0)
        dpsi = prop.adjoint(far * factor.unsqueeze(1))
        grad_o = -2 * physics.patches_adjoint(physics.exit_waves_adjoint_object(probe, dpsi), CORNERS, FRACS, shape, 2)
        grad_p = -2 * physics.exit_waves_adjoint_probe(patches, dpsi)
    assert torch.allclose(obj.grad, grad_o, rtol=1e-8, atol=1e-8)
    assert torch.allclose(probe.grad, grad_p, rtol=1e-8, atol=1e-8)


def test_split_positions() -> None:
    corner, frac = physics.split_positions(torch.tensor([[2.4, 3.5], [-1.6, 0.0]], dtype=torch.float64))
    assert corner.tolist() == [[2, 4], [-2, 0]]
    assert torch.allclose(frac, torch.tensor([[0.4, -0.5], [0.4, 0.0]]), atol=1e-6)
