"""Shift derivatives of the patch operator (BH engines, seed 002 App. I): finite differences and adjoint."""

from __future__ import annotations

import pytest
import torch

from workers import physics


def _setup() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    obj = torch.randn((24, 24), generator=gen, dtype=torch.complex128)
    pos = torch.tensor([[5.2, 6.7], [9.9, 4.1], [7.0, 8.3]], dtype=torch.float64)
    corner, _ = physics.split_positions(pos)
    delta = torch.randn((3, 2), generator=gen, dtype=torch.float64)
    delta2 = torch.randn((3, 2), generator=gen, dtype=torch.float64)
    return obj, corner, pos - corner, delta, delta2


def test_shift_derivatives_match_finite_differences() -> None:
    obj, corner, frac, delta, delta2 = _setup()
    h = 1e-5

    def s(f: torch.Tensor) -> torch.Tensor:
        return physics.patches(obj, corner, f, 8, 2)

    t = physics.patches_shift_derivative(obj, corner, frac, 8, 2, delta)
    torch.testing.assert_close(t, (s(frac + h * delta) - s(frac - h * delta)) / (2 * h), rtol=1e-7, atol=1e-8)

    def t_of(f: torch.Tensor) -> torch.Tensor:
        return physics.patches_shift_derivative(obj, corner, f, 8, 2, delta)

    t2 = physics.patches_shift_derivative(obj, corner, frac, 8, 2, delta, delta2)
    fd2 = (t_of(frac + h * delta2) - t_of(frac - h * delta2)) / (2 * h)
    torch.testing.assert_close(t2, fd2, rtol=1e-6, atol=1e-6)
    grad = physics.patches_shift_gradient(obj, corner, frac, 8, 2)
    torch.testing.assert_close((grad * delta[..., None, None]).sum(1), t)
    grad2 = physics.patches_shift_gradient(obj, corner, frac, 8, 2, delta2)
    torch.testing.assert_close((grad2 * delta[..., None, None]).sum(1), t2)


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_shift_derivative_adjoint(dtype: torch.dtype) -> None:
    """<T(O; d), v> = <O, T(.; d)* v> (real inner product)."""
    obj, corner, frac, delta, _ = _setup()
    obj = obj.to(dtype)
    real = torch.float32 if dtype == torch.complex64 else torch.float64
    frac, delta = frac.to(real), delta.to(real)
    v = torch.randn((3, 8, 8), generator=torch.Generator().manual_seed(1), dtype=dtype)
    lhs = torch.real((physics.patches_shift_derivative(obj, corner, frac, 8, 2, delta) * v.conj()).sum())
    rhs = torch.real((obj * physics.patches_shift_derivative_adjoint(v, corner, frac, (24, 24), 2, delta).conj()).sum())
    tol = 1e-4 if dtype == torch.complex64 else 1e-10
    assert float(lhs) == pytest.approx(float(rhs), rel=tol)
