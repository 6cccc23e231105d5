"""Schedules: the command-line spelling, the default schedule, and stages that end when the loss stops improving."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from workers.data import ScanData
from workers.engines.options import EngineName
from workers.job import JobRequest
from workers.runtime import Stage, run_schedule
from workers.schedule import (
    DEFAULT_SCHEDULE,
    PATIENCE,
    FastForwardOptions,
    StageSpec,
    TransformName,
    converged,
    parse_schedule,
    schedule_text,
)


def test_parse_round_trips_and_applies_options_where_known() -> None:
    stages = parse_schedule("rpie:5, bh-cg:100:1e-4", {"batch_size": 4, "refine_positions": True})
    assert [(s.engine, s.iterations, s.tolerance) for s in stages] == [
        (EngineName.RPIE, 5, None),
        (EngineName.BH_CG, 100, 1e-4),
    ]
    assert stages[0].options == {"batch_size": 4}
    assert stages[1].options == {"refine_positions": True}  # BH uses every frame: no batch size
    assert schedule_text(stages) == "rpie:5,bh-cg:100:0.0001"
    assert parse_schedule(schedule_text(DEFAULT_SCHEDULE)) == list(DEFAULT_SCHEDULE)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rpie", "stage 1 'rpie': expected ENGINE:ITERATIONS"),
        ("rpie:5,magic:3", "stage 2 'magic:3': unknown engine 'magic'"),
        ("rpie:x", "iterations must be an integer"),
        ("rpie:-2", "stage 1 'rpie:-2': iterations"),
        ("bh-cg:5:3", "tolerance"),
        ("rpie:5,", "stage 2 ''"),
    ],
)
def test_bad_schedules_name_the_stage(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="--schedule") as err:
        parse_schedule(text)
    assert message in str(err.value)


def test_unknown_option_is_refused() -> None:
    with pytest.raises(ValueError, match="no engine or transform knows nonsense"):
        parse_schedule("rpie:3", {"nonsense": 1})


def test_transform_options_go_to_the_transform_that_knows_them() -> None:
    stages = parse_schedule("epie:50,fast-forward,epie:350", {"tile": 64, "alpha": 0.5, "weights": "ff.pt"})
    assert [s.name for s in stages] == ["epie", "fast-forward", "epie"]
    assert stages[1].transform == TransformName.FAST_FORWARD
    assert stages[1].options == {"tile": 64, "weights": "ff.pt"}
    assert stages[0].options == stages[2].options == {"alpha": 0.5}
    assert schedule_text(stages) == "epie:50,fast-forward,epie:350"
    assert Stage.from_spec(stages[1]).options == FastForwardOptions(tile=64, weights="ff.pt")


@pytest.mark.parametrize(
    ("stage", "message"),
    [
        ({"transform": "fast-forward", "options": {"tile": 40}}, "multiple of 16"),
        ({"transform": "fast-forward", "options": {"tile": 32, "overlap": 32}}, "smaller than the tile"),
        ({"transform": "fast-forward", "options": {"tiles": 64}}, "tiles"),
        ({"transform": "fast-forward", "iterations": 3}, "no iterations or tolerance"),
        ({"transform": "recentre-probe", "options": {"tile": 64}}, "tile"),
        ({"transform": "fast-forward", "engine": "epie", "iterations": 3}, "exactly one of engine and transform"),
    ],
)
def test_bad_transform_stages_are_refused(stage: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        StageSpec.model_validate(stage)


def test_a_request_names_the_fast_forward_stage_with_its_options() -> None:
    request = JobRequest.model_validate(
        {
            "input": {"file": "scan.cxi"},
            "schedule": [
                {"engine": "epie", "iterations": 50},
                {"transform": "fast-forward", "options": {"weights": "nets/ff.pt", "guard": True}},
                {"engine": "epie", "iterations": 350},
            ],
        }
    )
    assert schedule_text(request.schedule) == "epie:50,fast-forward,epie:350"
    assert request.schedule[1].options == {"weights": "nets/ff.pt", "guard": True}
    with pytest.raises(ValueError, match="multiple of 16"):
        parse_schedule("epie:5,fast-forward", {"tile": 24})


def test_a_request_without_schedule_gets_the_default() -> None:
    request = JobRequest.model_validate({"input": {"file": "scan.cxi"}})
    assert request.schedule == list(DEFAULT_SCHEDULE)
    assert request.schedule is not DEFAULT_SCHEDULE


def test_converged_compares_over_the_patience_window() -> None:
    flat = [1.0] * (PATIENCE + 1)
    assert converged(flat, 1e-4)
    assert not converged(flat, None)
    assert not converged(flat[:PATIENCE], 1e-4)
    falling = [1.0 - 0.01 * k for k in range(PATIENCE + 1)]
    assert not converged(falling, 1e-3) and converged(falling, 0.1)


def test_stage_with_tolerance_ends_early_and_the_next_stage_runs(tiny_scan: ScanData) -> None:
    schedule = [Stage.parse("epie", 40, tolerance=0.5), Stage.parse("rpie", 3)]
    result = run_schedule(tiny_scan, schedule, device=torch.device("cpu"))
    first = len(result.loss) - 3
    assert PATIENCE < first < 40
    assert result.attrs["engines"] == "epie:40:0.5,rpie:3"
    assert result.attrs["iterations"] == first + 3


def test_a_resumed_stage_keeps_its_convergence_window(tiny_scan: ScanData, tmp_path) -> None:
    """Re-running a finished job from its final checkpoint runs no more epochs (the tolerance sees the stage's
    losses from before the resume, not an empty history)."""
    from workers.io import write_cxi
    from workers.job import JobSpec
    from workers.runtime import run_job

    write_cxi(tmp_path / "s.cxi", tiny_scan)
    schedule = [{"engine": "rpie", "iterations": 2}, {"engine": "bh-cg", "iterations": 60, "tolerance": 0.5}]
    spec = {"input": {"file": str(tmp_path / "s.cxi")}, "schedule": schedule, "device": "cpu"}
    job = JobSpec.model_validate(spec | {"output": str(tmp_path / "r.h5"), "checkpoint": str(tmp_path / "c.npz")})
    first = run_job(job)
    again = run_job(job)
    assert first.attrs["iterations"] < 62
    assert again.attrs["iterations"] == first.attrs["iterations"]


def test_error_across_options_names_the_options() -> None:
    """A validator across fields has no location: its error reads ``options: ...``, not an empty field."""
    with pytest.raises(ValueError, match=r"stage 1 'pine:3': options: .*rPIE weights"):
        parse_schedule("pine:3", {"sweep": "rpie", "alpha": 1.5})
