"""BH engines (seed 002): derivatives against finite differences and autograd, convergence, positions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workers import physics
from workers.data import Geometry, ScanData
from workers.engines.base import Engine
from workers.engines.bh_objective import Joint, Objective
from workers.engines.options import BHCGOptions, EngineName
from workers.engines.registry import make_engine
from workers.probe_start import initial_probe
from workers.simulate import simulate
from workers.state import ReconState

GEOMETRIES = {"far": Geometry("far"), "near": Geometry("near", 1e-10, 0.05, 5e-7)}


def _crandn(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.complex(
        torch.randn(shape, generator=gen, dtype=torch.float64), torch.randn(shape, generator=gen, dtype=torch.float64)
    )


def _problem(kind: str, objective: str, modes: int = 2, mask: bool = True) -> tuple[Objective, Joint, list[Joint]]:
    """A small float64 problem: 6 frames of 16 px on a 32 px object, a point near the data, directions."""
    gen = torch.Generator().manual_seed(3)
    m, n = 16, 6
    obj = 1 + 0.3 * _crandn(gen, 32, 32)
    probe = _crandn(gen, modes, m, m)
    pos = 6 + 8 * torch.rand((n, 2), generator=gen, dtype=torch.float64)
    pos = torch.where((pos - pos.round()).abs() > 0.4, pos + 0.2, pos)  # keep fractions away from +-0.5
    prop = physics.propagator(GEOMETRIES[kind], m, "cpu")
    x_true = Joint(obj + 0.05 * _crandn(gen, 32, 32), probe, pos + 0.1)
    corner, _ = physics.split_positions(x_true.pos)
    far = prop.forward(physics.exit_waves(probe, physics.patches(x_true.obj, corner, x_true.pos - corner, m, 2)))
    amps = physics.model_amplitude(far)
    det_mask = (torch.rand((m, m), generator=gen) > 0.1).double() if mask else None
    f = Objective(prop, amps, det_mask, objective, pad=2, eps=1e-13)
    dirs = [
        Joint(_crandn(gen, 32, 32), _crandn(gen, modes, m, m), torch.randn((n, 2), generator=gen, dtype=torch.float64))
        for _ in range(2)
    ]
    return f, Joint(obj, probe, pos), dirs


def _value(f: Objective, x: Joint) -> float:
    return float(f.linearize(x, shifts=True).value)


@pytest.mark.parametrize("kind", ["far", "near"])
@pytest.mark.parametrize("objective", ["gaussian", "poisson"])
@pytest.mark.parametrize("block", ["obj", "probe", "pos", "all"])
def test_gradient_and_hessian_match_finite_differences(kind: str, objective: str, block: str) -> None:
    """f(x + t s) - f - t<g, s> - t^2/2 H(s, s) = O(t^3): the error drops 8x when t halves."""
    f, x, (s, _) = _problem(kind, objective)
    if block != "all":
        zero = Joint(torch.zeros_like(s.obj), torch.zeros_like(s.probe), torch.zeros_like(s.pos))
        s = Joint(*(getattr(s if b == block else zero, b) for b in ("obj", "probe", "pos")))
    lin = f.linearize(x, shifts=True)
    gs, hss = float(f.gradient(lin).dot(s)), float(f.hessian(lin, s, s))
    f0 = float(lin.value)
    first, second = [], []
    for t in (1e-3, 5e-4):
        ft = _value(f, x + s.scaled(t))
        first.append(abs(ft - f0 - t * gs))
        second.append(abs(ft - f0 - t * gs - 0.5 * t * t * hss))
    assert 3.5 < first[0] / first[1] < 4.5  # O(t^2): the gradient is right
    assert second[0] < 1e-2 * first[0]  # the Hessian removes the t^2 term
    assert second[0] / second[1] > 5 or second[0] < 1e-9 * abs(f0)  # O(t^3) (or at round-off)


@pytest.mark.parametrize("kind", ["far", "near"])
def test_gradient_hessian_and_operator_match_autograd(kind: str) -> None:
    """Gradient = autograd's; H(s1, s2) symmetric, = d/dt <g(x + t s2), s1>; <Hop(s1), s2> = H(s1, s2)."""
    f, x, (s1, s2) = _problem(kind, "gaussian")

    def value_of(obj: torch.Tensor, probe: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        corner, _ = physics.split_positions(pos.detach())
        far = f.propagator.forward(physics.exit_waves(probe, physics.patches(obj, corner, pos - corner, 16, 2)))
        return ((physics.model_amplitude(far) - f.amplitudes).square() * f.mask).sum()

    leaves = [t.clone().requires_grad_(True) for t in (x.obj, x.probe, x.pos)]
    auto = torch.autograd.grad(value_of(*leaves), leaves, create_graph=True)
    lin = f.linearize(x, shifts=True)
    g = f.gradient(lin)
    # torch's gradient of a real function of z is dF/d(conj z) * 2 = our real-inner-product gradient
    for ours, theirs in zip((g.obj, g.probe, g.pos), auto, strict=True):
        torch.testing.assert_close(ours, theirs.detach(), rtol=1e-9, atol=1e-9)
    gs1 = sum(_real(a, b) for a, b in zip(auto, (s1.obj, s1.probe, s1.pos), strict=True))
    hvp = torch.autograd.grad(gs1, leaves)
    h_auto = sum(float(_real(a, b)) for a, b in zip(hvp, (s2.obj, s2.probe, s2.pos), strict=True))
    h12, h21 = float(f.hessian(lin, s1, s2)), float(f.hessian(lin, s2, s1))
    assert h12 == pytest.approx(h_auto, rel=1e-8)
    assert h12 == pytest.approx(h21, rel=1e-12)
    assert float(f.hessian_operator(lin, s1).dot(s2)) == pytest.approx(h12, rel=1e-8)


@pytest.mark.parametrize("kind", ["far", "near"])
def test_advance_carries_the_model_and_the_tangent_exactly(kind: str) -> None:
    """With positions fixed, the model and D dM(s) at x + alpha s follow from x's (bilinear model)."""
    f, x, (s, _) = _problem(kind, "gaussian")
    s = Joint(s.obj, s.probe, torch.zeros_like(s.pos))
    lin = f.linearize(x, shifts=False)
    model, t = f.advance(lin, s, f.tangent(lin, s), 0.7)
    moved = Joint(x.obj + 0.7 * s.obj, x.probe + 0.7 * s.probe, x.pos)
    fresh = f.linearize(moved, shifts=False)
    torch.testing.assert_close(model.patches, fresh.patches, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(model.far, fresh.far, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(t.far, f.tangent(fresh, s).far, rtol=1e-12, atol=1e-12)
    assert float(f.linearize(moved, shifts=False, model=model).value) == pytest.approx(float(fresh.value), rel=1e-12)


def _real(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.real((a * b.conj()).sum())


def _engine(name: str, data: ScanData, options: dict | None = None) -> Engine:
    state = ReconState.initial(initial_probe(data)[0])
    engine = make_engine(name, state, data.geometry, options or {})
    engine.add_frames(data.intensities, data.positions)
    return engine


def test_bh_cg_decreases_monotonically_on_noise_free_data() -> None:
    data = simulate(probe_size=32, n_positions=49, overlap=0.75, photons=float("inf"), seed=4)
    losses = _engine("bh-cg", data).iterate(40)
    assert all(b <= a for a, b in zip(losses, losses[1:], strict=False))
    assert losses[-1] < 0.2 * losses[0]


def test_bh_cg_notices_a_state_changed_between_iterations() -> None:
    """The carried model is dropped when another stage (or the user) edits the state in place."""
    data = simulate(probe_size=32, n_positions=25, overlap=0.7, photons=float("inf"), seed=4)
    engine = _engine("bh-cg", data)
    engine.iterate(3)
    engine.state.object.mul_(0.9)
    fresh = _engine("bh-cg", data)
    fresh.state.object, fresh.state.probe = engine.state.object.clone(), engine.state.probe.clone()
    assert engine.iterate(1)[0] == pytest.approx(fresh.iterate(1)[0], rel=1e-5)


def test_position_refinement_recovers_injected_errors() -> None:
    """Errors of up to 3 px (1 px RMS per axis) come back to < 0.2 px RMS (global shift removed)."""
    data = simulate(
        probe_size=32, n_positions=100, overlap=0.8, photons=float("inf"), position_error=1.0, scan="raster", seed=2
    )
    truth = data.truth["positions"]
    assert 2.5 < np.abs(data.positions - truth).max() <= 3.0
    engine = _engine("bh-cg", data, {"refine_positions": True, "position_refinement_start": 10})
    engine.iterate(100)
    err = engine.state.positions.numpy() - engine.state.origin - truth
    err -= err.mean(0)
    assert np.sqrt((err**2).sum(1).mean()) < 0.2


@pytest.mark.parametrize("name", ["bh-gd", "bh-cg", "bh-qn"])
@pytest.mark.parametrize("objective", ["gaussian", "poisson"])
def test_engines_stream_with_modes_and_growing_object(name: str, objective: str) -> None:
    """Frames arriving in chunks grow the object; each engine keeps reducing the loss (2 probe modes)."""
    data = simulate(probe_size=32, n_positions=36, overlap=0.7, photons=1e5, near_field=name == "bh-qn", seed=5)
    options = {"objective": objective, "refine_positions": name == "bh-cg"}
    if name == "bh-qn":
        options["cg_iterations"] = 2
    state = ReconState.initial(initial_probe(data, 2)[0])
    engine = make_engine(name, state, data.geometry, options)
    shapes = []
    for chunk in np.array_split(np.arange(data.n_frames), 3):
        engine.add_frames(data.intensities[chunk], data.positions[chunk])
        shapes.append(tuple(state.object.shape))
        engine.iterate(4)
    assert shapes[0] != shapes[-1] and engine.n_frames == data.n_frames
    losses = engine.iterate(6)
    assert np.isfinite(losses).all() and losses[-1] < engine.loss_history[8]
    assert engine.snapshot()["probe"].shape == (2, 32, 32)


def test_bh_cg_continues_an_epie_schedule() -> None:
    from workers.runtime import Stage, run_schedule

    data = simulate(probe_size=32, n_positions=36, overlap=0.7, photons=1e6, seed=6)
    result = run_schedule(data, [Stage.parse("epie", 3), Stage.parse("bh-cg", 10)], device=torch.device("cpu"))
    assert len(result.loss) == 13 and result.loss[-1] < 0.5 * result.loss[2]


def test_options_are_strict_and_registered() -> None:
    for name in (EngineName.BH_GD, EngineName.BH_CG, EngineName.BH_QN):
        with pytest.raises(ValueError):
            make_engine(name, ReconState.initial(np.ones((1, 8, 8), np.complex64)), Geometry(), {"step": 1.0})
    with pytest.raises(ValueError):
        BHCGOptions(objective="laplace")
