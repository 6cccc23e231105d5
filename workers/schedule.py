"""Engine schedules: a stage, the default schedule, and the command-line spelling (torch-free).

A schedule is a list of stages run in turn on one shared state. A stage runs ``iterations``
epochs of one engine, or fewer when ``tolerance`` is set and the loss has stopped improving:
the stage ends once the loss fell by less than ``tolerance`` (relative) over the last
``PATIENCE`` epochs.

The default schedule (``DEFAULT_SCHEDULE``), for users who do not know the engines: a few
rPIE epochs, robust from a poor start, then BH-CG (seed 002), whose Newton steps converge
fast once the probe is roughly right, until the loss stops improving by 1e-4 per
``PATIENCE`` epochs or 200 epochs in all have run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from workers.engines.options import OPTIONS, EngineName

PATIENCE = 5


class StageSpec(BaseModel):
    """One stage: ``iterations`` epochs of ``engine`` with ``options``, ended early by ``tolerance``."""

    model_config = ConfigDict(extra="forbid")

    engine: EngineName
    iterations: int = Field(ge=0, le=100_000, description="Epochs; for a stream, epochs after the scan has ended.")
    options: dict[str, Any] = Field(default_factory=dict, description="Engine options (the engine's options model).")
    tolerance: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description=f"End the stage when the loss fell by less than this (relative) over {PATIENCE} epochs.",
    )

    @model_validator(mode="after")
    def _options_fit_engine(self) -> StageSpec:
        """Refuse options the engine does not know or values out of range, naming the option."""
        OPTIONS[self.engine].model_validate(self.options)
        return self


DEFAULT_SCHEDULE: tuple[StageSpec, ...] = (
    StageSpec(engine=EngineName.RPIE, iterations=10),
    StageSpec(engine=EngineName.BH_CG, iterations=190, tolerance=1e-4),
)


def default_schedule() -> list[StageSpec]:
    """A fresh copy of ``DEFAULT_SCHEDULE``."""
    return [s.model_copy(deep=True) for s in DEFAULT_SCHEDULE]


class StageLike(Protocol):
    """What names a stage: its engine, epochs and tolerance (a ``StageSpec`` or the runtime's ``Stage``)."""

    engine: EngineName
    iterations: int
    tolerance: float | None


def schedule_text(schedule: Sequence[StageLike]) -> str:
    """The command-line spelling of ``schedule``, e.g. ``rpie:10,bh-cg:190:0.0001``."""
    return ",".join(f"{s.engine.value}:{s.iterations}" + (f":{s.tolerance:g}" if s.tolerance else "") for s in schedule)


def converged(losses: list[float], tolerance: float | None) -> bool:
    """True when ``losses`` (this stage's) fell by less than ``tolerance`` over the last ``PATIENCE`` epochs."""
    if tolerance is None or len(losses) <= PATIENCE:
        return False
    before, now = losses[-PATIENCE - 1], losses[-1]
    return before - now < tolerance * abs(before)


def parse_schedule(text: str, options: dict[str, Any] | None = None) -> list[StageSpec]:
    """``"rpie:5,bh-cg:100"`` -> stages; ``options`` apply to every stage whose engine knows them.

    Each comma-separated stage is ``ENGINE:ITERATIONS`` or ``ENGINE:ITERATIONS:TOLERANCE``.
    Raises ``ValueError`` naming the stage and the problem.
    """
    stages = []
    unknown = set(options or {}) - {key for m in OPTIONS.values() for key in m.model_fields}
    if unknown:
        raise ValueError(f"--option: no engine knows {', '.join(sorted(unknown))}")
    for k, part in enumerate(p.strip() for p in text.split(",")):
        fields = part.split(":")
        if not part or len(fields) not in (2, 3):
            raise ValueError(f"--schedule: stage {k + 1} {part!r}: expected ENGINE:ITERATIONS[:TOLERANCE]")
        name, *numbers = fields
        if name not in set(EngineName):
            known = ", ".join(e.value for e in EngineName)
            raise ValueError(f"--schedule: stage {k + 1} {part!r}: unknown engine {name!r} (one of {known})")
        try:
            iterations = int(numbers[0])
            tolerance = float(numbers[1]) if len(numbers) == 2 else None
        except ValueError:
            raise ValueError(f"--schedule: stage {k + 1} {part!r}: iterations must be an integer") from None
        known_options = OPTIONS[EngineName(name)].model_fields
        stage_options = {key: v for key, v in (options or {}).items() if key in known_options}
        try:
            stages.append(StageSpec(engine=name, iterations=iterations, options=stage_options, tolerance=tolerance))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"--schedule: stage {k + 1} {part!r}: {problems}") from None
    return stages
