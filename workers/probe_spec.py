"""How a reconstruction's probe starts, as a user says it (strict pydantic, torch-free: the CLI,
the job spec and the service share it). ``workers.probe_start.initial_probe`` acts on it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class ProbeStart(BaseModel):
    """A probe start the user knows better than the data: a file, or simple optics parameters.

    Neither given: the scan file's probe guess if it has one, else a search over probes
    derived from the data (``workers.probe_start``).
    """

    model_config = ConfigDict(extra="forbid")

    file: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description=(
            "A probe file: a PtychoStream result or ptychodus product (HDF5 `probe`), a CXI file "
            "(entry_1/instrument_1/source_1/probe or entry_1/probe_1/data), or an .npy/.npz array."
        ),
    )
    diameter: float | None = Field(
        default=None, gt=0, description="Beam diameter at the sample, pixels: a disc of this width."
    )
    defocus: float | None = Field(
        default=None,
        description=(
            "Distance from the focus to the sample, metres (positive: the sample is downstream of the "
            "focus, a diverging beam): the beam's quadratic phase."
        ),
    )

    @model_validator(mode="after")
    def _one_kind(self) -> ProbeStart:
        if self.file is not None and (self.diameter is not None or self.defocus is not None):
            raise ValueError("probe start: give either a file or optics parameters (diameter, defocus), not both")
        return self

    @property
    def empty(self) -> bool:
        """True when the user said nothing (the default start applies)."""
        return self.file is None and self.diameter is None and self.defocus is None
