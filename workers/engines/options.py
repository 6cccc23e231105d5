"""Engine names and their options: strict pydantic models, free of torch so the service can import them."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class EngineName(StrEnum):
    """Every reconstruction engine. ``OPTIONS`` gives its options (torch-free, for the service); each
    engine class declares its name, and ``workers.engines.registry`` is derived from the classes."""

    EPIE = "epie"
    RPIE = "rpie"
    ADAM = "adam"
    BH_GD = "bh-gd"
    BH_CG = "bh-cg"
    BH_QN = "bh-qn"
    PINE = "pine"
    JOINT_XRF = "joint-xrf"


FILE_OPTION = {"file": True}  # ``json_schema_extra`` of an option naming a file (the service resolves it)


def file_options(model: type[BaseModel]) -> tuple[str, ...]:
    """The options of ``model`` that name a file (marked with ``FILE_OPTION``): a service resolves them
    under its data root like input files, so a job cannot make a worker read any other file."""
    return tuple(
        name
        for name, field in model.model_fields.items()
        if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("file")
    )


class EngineOptions(BaseModel):
    """Options every engine accepts."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    update_probe: bool = Field(True, description="Refine the probe as well as the object.")
    probe_update_start: int = Field(0, ge=0, description="First epoch (0-based) in which the probe is refined.")


class BatchedOptions(EngineOptions):
    """Engines that visit the frames in mini-batches, in an order, within an epoch (PIE, Adam)."""

    batch_size: int = Field(1, ge=1, description="Frames per update; 1 is the serial form of the papers.")
    order: Literal["random", "newest-first"] = Field(
        "random", description="Visiting order per epoch: a fresh permutation, or newest frames first (streaming)."
    )


class PIEOptions(BatchedOptions):
    """The PIE family: O += a conj(P) dpsi / ((1 - g)|P|^2 + g max|P|^2), likewise for P."""

    alpha: float = Field(1.0, gt=0, le=2, description="Object step (ePIE) or object regularisation (rPIE).")
    beta: float = Field(1.0, gt=0, le=2, description="Probe step (ePIE) or probe regularisation (rPIE).")


class EPIEOptions(PIEOptions):
    """ePIE (Maiden & Rodenburg 2009, eqs. 6-7): step sizes alpha (object) and beta (probe)."""


class RPIEOptions(PIEOptions):
    """rPIE (Maiden, Johnson & Li 2017, eq. 22): regularisation weights alpha (object), beta (probe)."""

    alpha: float = Field(0.1, gt=0, le=1, description="Object weight: 1 gives ePIE, small values a larger step.")
    beta: float = Field(1.0, gt=0, le=1, description="Probe weight: 1 gives ePIE's probe update.")


class PINEOptions(EPIEOptions):
    """PINE (seed 001): an ePIE sweep, then O <- (1 - rho) O + rho D(O) with a learned nonexpansive
    denoiser D on the real and imaginary parts. ``sweep="rpie"`` puts the denoising step after an rPIE
    sweep instead (the seed's hybrid steepest descent takes any gradient step; its section 6 names other
    engines as future work): alpha and beta are then rPIE's weights, alpha 0.1 unless given."""

    sweep: Literal["epie", "rpie"] = Field(
        "epie", description="The sweep before each denoising step; alpha and beta are that engine's."
    )

    rho: float = Field(
        0.49, ge=0, le=1, description="Denoising weight; 0 is ePIE, the paper's convergence needs < 0.5."
    )
    denoise_every: int = Field(1, ge=1, description="Denoise after every k-th epoch (the denoiser's cost, see README).")
    denoiser: str | None = Field(
        None,
        description="Denoiser weights file; None: the shipped models/weights/dncnn.pt.",
        json_schema_extra=FILE_OPTION,
    )
    tile: int = Field(256, ge=16, le=4096, description="Denoiser tile (pixels per side); tiles overlap by its reach.")
    rescale: Literal["scanned", "object"] = Field(
        "scanned",
        description="Min-max range of each channel: the scanned region (denoised there) or the whole object array.",
    )

    @model_validator(mode="before")
    @classmethod
    def rpie_defaults(cls, data: object) -> object:
        """rPIE's object weight 0.1 (``RPIEOptions``) when the rpie sweep is chosen without an alpha."""
        if isinstance(data, dict) and data.get("sweep") == "rpie" and "alpha" not in data:
            return data | {"alpha": RPIEOptions.model_fields["alpha"].default}
        return data

    @model_validator(mode="after")
    def rpie_weights(self) -> PINEOptions:
        """rPIE's weights lie in (0, 1] (1 is ePIE's step)."""
        if self.sweep == "rpie" and max(self.alpha, self.beta) > 1:
            raise ValueError("alpha and beta are rPIE weights with sweep=rpie: each must be <= 1")
        return self


class AdamOptions(BatchedOptions):
    """Autodiff baseline: the amplitude objective minimised with torch.optim.Adam."""

    batch_size: int = Field(32, ge=1, description="Frames per Adam step.")
    lr: float = Field(0.05, gt=0, description="Object learning rate; the probe's is scaled by its RMS amplitude.")


class BHOptions(EngineOptions):
    """Bilinear-Hessian engines (seed 002): Newton step lengths on every frame received at once (one
    iteration is one epoch), no tuning needed."""

    objective: Literal["gaussian", "poisson"] = Field(
        "gaussian", description="Gaussian amplitude objective, or the Poisson likelihood (low-count data)."
    )
    refine_positions: bool = Field(False, description="Refine the scan positions (sub-pixel, mean shift pinned).")
    position_refinement_start: int = Field(
        0, ge=0, description="First iteration (0-based) in which positions are refined, when refine_positions is set."
    )
    max_position_step: float = Field(
        0.5, gt=0, description="Largest position change per iteration, pixels (a safeguard for poor early models)."
    )
    object_scale: float | None = Field(
        None,
        gt=0,
        description="Object scaling c_psi (seed 002 App. II), preconditioner c_psi^2; None: automatic, per pixel.",
    )
    probe_scale: float | None = Field(
        None,
        gt=0,
        description="Probe scaling c_q (seed 002 App. II), preconditioner c_q^2; None: automatic, per pixel.",
    )
    position_scale: float | None = Field(
        None,
        gt=0,
        description="Position scaling c_rho (seed 002 App. II), preconditioner c_rho^2; None: automatic, per frame.",
    )


class BHGDOptions(BHOptions):
    """BH-GD: preconditioned gradient direction, Newton step length alpha = -<g, s> / H(s, s)."""


class BHCGOptions(BHOptions):
    """BH-CG: conjugate directions with Daniel's beta = H(Pg, s_prev) / H(s_prev, s_prev), Newton steps."""


class BHQNOptions(BHOptions):
    """BH-QN: Newton direction from inner conjugate gradients on the Hessian operator; BH-CG at first."""

    inner_iterations: int = Field(4, ge=1, description="Inner CG iterations per outer iteration.")
    cg_iterations: int = Field(
        5, ge=0, description="Outer iterations done by BH-CG before the quasi-Newton directions start."
    )


class JointXRFOptions(BatchedOptions):
    """Joint ptychography + X-ray fluorescence (seed 004): phase, non-negative element maps and probe
    by Adam on F = ptychography residual / sum I + alpha fluorescence residual / norm."""

    batch_size: int = Field(32, ge=1, description="Frames per Adam step (their diffraction and fluorescence).")
    lr: float = Field(0.1, gt=0, description="Learning rate of the phase (or object) and element absorptions.")
    link: Literal["physical", "linear", "none"] = Field(
        "physical",
        description="Object from the maps: physical O = exp(-1/2 sum mu w + i phase); linear O = 1 - 1/2 sum mu w + "
        "i x (the seed's weak-object link); none: object and maps fitted apart (ptychography, fluorescence alone).",
    )
    fluorescence_loss: Literal["gaussian", "poisson"] = Field(
        "gaussian", description="Fluorescence residual: sum (f - D)^2 / sum D^2, or the Poisson deviance / sum D."
    )
    alpha: float | None = Field(
        None, ge=0, description="Fluorescence weight; None: GradNorm at the start (seed sec. 2.3) times alpha_scale."
    )
    alpha_scale: float = Field(1.0, gt=0, description="Factor on the GradNorm weight (the seed tunes it to the noise).")
    solver: Literal["adam", "bh-cg"] = Field(
        "adam",
        description="Adam on mini-batches (autodiff), or BH-CG on all frames (seed 002's Newton steps through the "
        "link; Gaussian fluorescence residual only).",
    )

    @model_validator(mode="after")
    def _bh_gaussian(self) -> JointXRFOptions:
        """BH-CG's Hessian is written for the Gaussian fluorescence residual."""
        if self.solver == "bh-cg" and self.fluorescence_loss != "gaussian":
            raise ValueError("solver bh-cg needs fluorescence_loss gaussian")
        return self


OPTIONS: dict[EngineName, type[EngineOptions]] = {
    EngineName.EPIE: EPIEOptions,
    EngineName.RPIE: RPIEOptions,
    EngineName.ADAM: AdamOptions,
    EngineName.BH_GD: BHGDOptions,
    EngineName.BH_CG: BHCGOptions,
    EngineName.BH_QN: BHQNOptions,
    EngineName.PINE: PINEOptions,
    EngineName.JOINT_XRF: JointXRFOptions,
}
