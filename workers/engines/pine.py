"""PINE: ePIE with a learned nonexpansive denoiser in the loop (Yamada et al., seed 001).

One epoch is the ePIE sweep (``workers.engines.pie.EPIE``, unchanged; or rPIE's, ``sweep="rpie"``)
followed by the denoising step of the hybrid steepest descent, seed 001 eq. (20):

    O <- (1 - rho) O + rho D(O),   D(O) = Dhat(Re O) + i Dhat(Im O)   (eq. 22)

with Dhat = Id - R the trained DnCNN (``models.dncnn``) applied through ``workers.denoise``.
rho = 0 is ePIE exactly (the step is skipped, the network never loaded); ``denoise_every`` = k
applies the step after every k-th epoch only (the network costs more than a sweep on a CPU).

Min-max range (``rescale``): the paper does not say; its authors' code rescales each channel
over the whole array. Here the default takes the range over the scanned region (summed probe
intensity above ``workers.images.LEVEL`` of its maximum) and denoises that region's bounding box
only: the unscanned border keeps the start value 1 + 0i, which lies outside a measured object's
range whenever the object's scale is not 1 (the probe carries the scale the data fix, see
``workers.engines.pie``) and then squeezes the scanned pixels into a sliver of [0, 1].
"""

from __future__ import annotations

import torch

from models.dncnn import load_denoiser
from workers import physics
from workers.denoise import ComplexDenoiser
from workers.engines.options import EngineName, PINEOptions
from workers.engines.pie import EPIE, step_weights
from workers.images import LEVEL


class PINE(EPIE):
    """ePIE sweep, then the denoising step (module docstring)."""

    name = EngineName.PINE
    options: PINEOptions

    _denoiser: ComplexDenoiser | None = None

    def weights(self) -> tuple[float, float, float, float]:
        """ePIE's step weights, or rPIE's with ``sweep="rpie"`` (``workers.engines.pie``)."""
        return step_weights(self.options.sweep, self.options.alpha, self.options.beta)

    def epoch_step(self, update_probe: bool) -> torch.Tensor:
        residual = super().epoch_step(update_probe)
        if self.options.rho > 0 and (self.epoch + 1) % self.options.denoise_every == 0:
            self.denoise()
        return residual

    def denoise(self) -> None:
        """O <- (1 - rho) O + rho D(O) on the current object."""
        region = self.scanned_region() if self.options.rescale == "scanned" else None
        denoised = self.denoiser(self.state.object, region)
        rho = self.options.rho
        self.state.object.mul_(1 - rho).add_(denoised, alpha=rho)

    def scanned_region(self) -> torch.Tensor:
        """Object pixels (H, W) bool where the summed probe intensity exceeds ``LEVEL`` x its maximum."""
        state = self.state
        corner, _ = physics.split_positions(state.positions[: self.n_frames])
        power = state.probe.real.square().sum(0) + state.probe.imag.square().sum(0)
        h, w = state.object.shape
        illum = physics.extract_adjoint(power.expand(corner.shape[0], -1, -1), corner, (h, w))
        top = illum.max()
        return (illum > LEVEL * top) | (top <= 0)  # nothing lit (a zero probe): everything

    @property
    def denoiser(self) -> ComplexDenoiser:
        """The network, loaded on the engine's device at its first use."""
        if self._denoiser is None:
            net = load_denoiser(self.options.denoiser, device=self.device)
            self._denoiser = ComplexDenoiser(net, self.options.tile)
        return self._denoiser
