"""Engine schedules: a stage, the default schedule, and the command-line spelling (torch-free).

A schedule is a list of stages run in turn on one shared state. An engine stage runs
``iterations`` epochs of one engine, or fewer when ``tolerance`` is set and the loss has stopped
improving: the stage ends once the loss fell by less than ``tolerance`` (relative) over the last
``PATIENCE`` epochs. A transform stage applies a function of the state once (``TransformName``), with its own
options (``TRANSFORM_OPTIONS``): ``recentre-probe`` takes none; ``fast-forward`` (seed 003) takes
the network's weights file, its tile and the tiles' overlap.

The default schedule (``DEFAULT_SCHEDULE``), for users who do not know the engines: a few
rPIE epochs, robust from a poor start, then BH-CG (seed 002), whose Newton steps converge
fast once the probe is roughly right, until the loss stops improving by 1e-4 per
``PATIENCE`` epochs or 200 epochs in all have run.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from workers.engines.options import FILE_OPTION, OPTIONS, EngineName
from workers.errors import validation_problems

PATIENCE = 5


class TransformName(StrEnum):
    """Transform stages: a function of the state applied once between engine stages (``workers.transforms``)."""

    RECENTRE_PROBE = "recentre-probe"
    FAST_FORWARD = "fast-forward"


class TransformOptions(BaseModel):
    """Options of a transform stage (strict: a misspelt option is refused)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class RecentreProbeOptions(TransformOptions):
    """``recentre-probe`` takes no options."""


class FastForwardOptions(TransformOptions):
    """The learned fast-forward jump (seed 003, ``workers.transforms.fast_forward``)."""

    weights: str | None = Field(
        None,
        description="Network weights file; None: the shipped models/weights/fast_forward.pt.",
        json_schema_extra=FILE_OPTION,
    )
    tile: int = Field(128, ge=16, le=4096, description="Network tile (pixels per side, a multiple of 16).")
    overlap: int = Field(32, ge=0, le=2048, description="Pixels shared by neighbouring tiles, blended linearly.")
    guard: bool = Field(
        True, description="Keep the jump only if it lowers the data residual on all frames (else undo it)."
    )

    @model_validator(mode="after")
    def _tiles(self) -> FastForwardOptions:
        """A tile the network's four poolings divide, larger than the overlap."""
        if self.tile % 16:
            raise ValueError(f"tile must be a multiple of 16, got {self.tile}")
        if self.overlap >= self.tile:
            raise ValueError(f"overlap ({self.overlap}) must be smaller than the tile ({self.tile})")
        return self


TRANSFORM_OPTIONS: dict[TransformName, type[TransformOptions]] = {
    TransformName.RECENTRE_PROBE: RecentreProbeOptions,
    TransformName.FAST_FORWARD: FastForwardOptions,
}


class StageSpec(BaseModel):
    """One stage: ``iterations`` epochs of ``engine`` with ``options`` (ended early by ``tolerance``),
    or one ``transform`` of the state."""

    model_config = ConfigDict(extra="forbid")

    engine: EngineName | None = Field(default=None, description="The engine of an engine stage.")
    transform: TransformName | None = Field(default=None, description="The transform of a transform stage.")
    iterations: int = Field(
        default=0, ge=0, le=100_000, description="Epochs; for a stream, epochs after the scan has ended."
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="Options of the engine's or the transform's options model."
    )
    tolerance: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description=f"End the stage when the loss fell by less than this (relative) over {PATIENCE} epochs.",
    )

    @model_validator(mode="after")
    def _one_kind(self) -> StageSpec:
        """An engine stage with its iterations and options the engine knows, or a transform with its options."""
        if (self.engine is None) == (self.transform is None):
            raise ValueError("a stage names exactly one of engine and transform")
        if self.transform is not None:
            if self.iterations or self.tolerance is not None:
                raise ValueError(f"transform {self.transform.value!r}: takes no iterations or tolerance")
            TRANSFORM_OPTIONS[self.transform].model_validate(self.options)
            return self
        if "iterations" not in self.model_fields_set:
            raise ValueError(f"engine {self.engine.value!r}: iterations missing")
        OPTIONS[self.engine].model_validate(self.options)
        return self

    @property
    def name(self) -> str:
        """The engine's or the transform's name."""
        return (self.engine or self.transform).value  # type: ignore[union-attr]

    @property
    def options_model(self) -> type[BaseModel]:
        """The options model of the stage's engine or transform."""
        return OPTIONS[self.engine] if self.engine is not None else TRANSFORM_OPTIONS[self.transform]  # type: ignore[index]


DEFAULT_SCHEDULE: tuple[StageSpec, ...] = (
    StageSpec(engine=EngineName.RPIE, iterations=10),
    StageSpec(engine=EngineName.BH_CG, iterations=190, tolerance=1e-4),
)


def default_schedule() -> list[StageSpec]:
    """A fresh copy of ``DEFAULT_SCHEDULE``."""
    return [s.model_copy(deep=True) for s in DEFAULT_SCHEDULE]


class StageLike(Protocol):
    """What names a stage (a ``StageSpec`` or the runtime's ``Stage``)."""

    @property
    def name(self) -> str: ...

    @property
    def iterations(self) -> int: ...

    @property
    def tolerance(self) -> float | None: ...


def schedule_text(schedule: Sequence[StageLike]) -> str:
    """The command-line spelling of ``schedule``, e.g. ``rpie:10,bh-cg:190:0.0001``."""
    parts = []
    for s in schedule:
        if s.name in set(TransformName):
            parts.append(s.name)
        else:
            parts.append(f"{s.name}:{s.iterations}" + (f":{s.tolerance:g}" if s.tolerance else ""))
    return ",".join(parts)


def converged(losses: list[float], tolerance: float | None) -> bool:
    """True when ``losses`` (this stage's) fell by less than ``tolerance`` over the last ``PATIENCE`` epochs."""
    if tolerance is None or len(losses) <= PATIENCE:
        return False
    before, now = losses[-PATIENCE - 1], losses[-1]
    return before - now < tolerance * abs(before)


def parse_schedule(text: str, options: dict[str, Any] | None = None) -> list[StageSpec]:
    """``"rpie:5,bh-cg:100"`` -> stages; ``options`` apply to every stage whose engine or transform knows them.

    Each comma-separated stage is ``ENGINE:ITERATIONS`` or ``ENGINE:ITERATIONS:TOLERANCE``.
    Raises ``ValueError`` naming the stage and the problem.
    """
    stages = []
    models = [*OPTIONS.values(), *TRANSFORM_OPTIONS.values()]
    unknown = set(options or {}) - {key for m in models for key in m.model_fields}
    if unknown:
        raise ValueError(f"--option: no engine or transform knows {', '.join(sorted(unknown))}")
    for k, part in enumerate(p.strip() for p in text.split(",")):
        fields = part.split(":")
        if part in set(TransformName):
            fields_known = TRANSFORM_OPTIONS[TransformName(part)].model_fields
            stage_options = {key: v for key, v in (options or {}).items() if key in fields_known}
            try:
                stages.append(StageSpec(transform=TransformName(part), options=stage_options))
            except ValidationError as exc:
                raise ValueError(f"--schedule: stage {k + 1} {part!r}: {validation_problems(exc, 'options')}") from None
            continue
        if not part or len(fields) not in (2, 3):
            transforms = ", ".join(t.value for t in TransformName)
            expected = f"expected ENGINE:ITERATIONS[:TOLERANCE] or a transform ({transforms})"
            raise ValueError(f"--schedule: stage {k + 1} {part!r}: {expected}")
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
            raise ValueError(f"--schedule: stage {k + 1} {part!r}: {validation_problems(exc, 'options')}") from None
    if not any(s.engine for s in stages):
        raise ValueError("--schedule: needs at least one engine stage")
    return stages
