"""The ptychographic forward model as forward/adjoint operator pairs.

Every engine builds its updates from these functions; none re-implements them.
All operators are batched torch functions that run on any device. Shapes use
named axes: ``BATCH`` frames, ``MODE`` probe modes, ``M`` the (square) frame size,
``H, W`` the object array.

Conventions
-----------
* A position is the (row, col) of the *top-left corner* of the probe window in the
  object array, in pixels, sub-pixel allowed. It is split into an integer corner and a
  fractional part ``frac`` in [-0.5, 0.5): ``position = corner + frac``.
* The patch operator is S_r O = C F^-1[ exp(+2 pi i xi . frac) F(E_n O) ] (BH.md's S_k):
  E_n extracts an (M + 2 pad)^2 window at the integer corner n - pad, the phase ramp moves
  the content by -frac (so pixel x of the patch samples O at x + r), C crops ``pad`` pixels
  per border. ``pad`` keeps the periodic wrap of the Fourier shift away from the patch.
* Far-field propagation is the unitary FFT (``norm="ortho"``) with the zero frequency at
  array index [0, 0]; measured frames are converted once from the detector's layout
  (``workers.layout``), so no shift runs per iteration. Near-field propagation is the
  Fresnel transfer function. Both are unitary, so the adjoint is the inverse.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch

from workers.data import Geometry

Tensor = torch.Tensor

SUBPIXEL_PAD = 2  # pixels per border of the window a sub-pixel shift works on (see the module docstring)


def split_positions(positions: Tensor) -> tuple[Tensor, Tensor]:
    """Split positions (BATCH, 2) into integer corners (long) and fractions in [-0.5, 0.5)."""
    corner = torch.floor(positions + 0.5)
    return corner.long(), (positions - corner).to(torch.float32)


def _window_index(corner: Tensor, size: int, width: int) -> Tensor:
    """Flat indices (BATCH, size, size) of square windows with top-left ``corner`` (BATCH, 2)."""
    offs = torch.arange(size, device=corner.device)
    rows = corner[:, 0, None, None] + offs[None, :, None]
    cols = corner[:, 1, None, None] + offs[None, None, :]
    return rows * width + cols


def extract(image: Tensor, corner: Tensor, size: int) -> Tensor:
    """E: windows (BATCH, size, size) of ``image`` (H, W) at integer top-left ``corner`` (BATCH, 2)."""
    idx = _window_index(corner, size, image.shape[-1])
    return image.reshape(-1)[idx]


def extract_adjoint(windows: Tensor, corner: Tensor, shape: tuple[int, int]) -> Tensor:
    """E*: scatter-add ``windows`` (BATCH, s, s) into a zero image of ``shape`` (H, W)."""
    out = torch.zeros(shape[0] * shape[1], dtype=windows.dtype, device=windows.device)
    idx = _window_index(corner, windows.shape[-1], shape[1])
    out.index_add_(0, idx.reshape(-1), windows.reshape(-1))
    return out.reshape(shape)


def frequencies(size: int, device: torch.device | str) -> Tensor:
    """FFT sample frequencies of a length-``size`` axis, cycles per pixel (float32)."""
    return torch.fft.fftfreq(size, device=device, dtype=torch.float32)


def shift_ramp(shift: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Fourier multiplier (BATCH, rows, cols) that moves content by ``shift`` (BATCH, 2) pixels.

    ``size`` is the (rows, cols) of the field, or one int for a square. ``ifft2(fft2(u) *
    shift_ramp(d))`` samples u at x - d (periodically).
    """
    rows, cols = (size, size) if isinstance(size, int) else size
    xi_r, xi_c = frequencies(rows, shift.device), frequencies(cols, shift.device)
    phase = shift[:, 0, None, None] * xi_r[None, :, None] + shift[:, 1, None, None] * xi_c[None, None, :]
    return torch.polar(torch.ones_like(phase), -2 * math.pi * phase)


def fourier_shift(u: Tensor, shift: Tensor) -> Tensor:
    """Shift fields ``u`` (BATCH, ..., rows, cols) by ``shift`` (BATCH, 2) pixels; adjoint: shift by -shift."""
    ramp = shift_ramp(shift, (u.shape[-2], u.shape[-1]))
    while ramp.ndim < u.ndim:
        ramp = ramp.unsqueeze(1)
    return torch.fft.ifft2(torch.fft.fft2(u) * ramp)


def patch_ramp(frac: Tensor, size: int, pad: int) -> Tensor:
    """The sub-pixel multiplier (BATCH, M + 2 pad, M + 2 pad) of ``patches``; pass it as ``ramp`` to reuse it."""
    return shift_ramp(-frac, size + 2 * pad)


def patches(
    obj: Tensor, corner: Tensor, frac: Tensor | None, size: int, pad: int, ramp: Tensor | None = None
) -> Tensor:
    """S_r: object patches (BATCH, M, M) at positions ``corner + frac``; ``frac=None``: integer only.

    ``ramp``: ``patch_ramp(frac, size, pad)`` when already computed.
    """
    if frac is None:
        return extract(obj, corner, size)
    big = extract(obj, corner - pad, size + 2 * pad)
    ramp = patch_ramp(frac, size, pad) if ramp is None else ramp
    big = torch.fft.ifft2(torch.fft.fft2(big) * ramp)
    return big[..., pad : pad + size, pad : pad + size]


def patches_adjoint(
    values: Tensor, corner: Tensor, frac: Tensor | None, shape: tuple[int, int], pad: int, ramp: Tensor | None = None
) -> Tensor:
    """S_r*: add patches ``values`` (BATCH, M, M) into an object of ``shape`` (H, W); ``ramp`` as in ``patches``."""
    if frac is None:
        return extract_adjoint(values, corner, shape)
    big = torch.nn.functional.pad(values, (pad, pad, pad, pad))
    ramp = patch_ramp(frac, values.shape[-1], pad) if ramp is None else ramp
    big = torch.fft.ifft2(torch.fft.fft2(big) * ramp.conj())
    return extract_adjoint(big, corner - pad, shape)


def exit_waves(probe: Tensor, obj_patches: Tensor) -> Tensor:
    """Exit waves (BATCH, MODE, M, M) = probe (MODE, M, M) * patches (BATCH, M, M)."""
    return probe.unsqueeze(0) * obj_patches.unsqueeze(1)


def exit_waves_adjoint_object(probe: Tensor, waves: Tensor) -> Tensor:
    """Adjoint of ``exit_waves`` in the patches: sum_k conj(P_k) waves_k -> (BATCH, M, M)."""
    return (probe.conj().unsqueeze(0) * waves).sum(1)


def exit_waves_adjoint_probe(obj_patches: Tensor, waves: Tensor) -> Tensor:
    """Adjoint of ``exit_waves`` in the probe: sum_b conj(O_b) waves_b -> (MODE, M, M)."""
    return (obj_patches.conj().unsqueeze(1) * waves).sum(0)


def intensity(far: Tensor) -> Tensor:
    """Detector intensity (BATCH, M, M) of incoherent modes ``far`` (BATCH, MODE, M, M)."""
    return (far.real.square() + far.imag.square()).sum(1)


class Propagator(Protocol):
    """A unitary propagator from the sample plane to the detector, acting on the last two axes."""

    def forward(self, u: Tensor) -> Tensor: ...

    def adjoint(self, v: Tensor) -> Tensor: ...


class FarField:
    """Fraunhofer propagation D = unitary FFT2 (DC at index [0, 0]); D* = unitary IFFT2."""

    def forward(self, u: Tensor) -> Tensor:
        return torch.fft.fft2(u, norm="ortho")

    def adjoint(self, v: Tensor) -> Tensor:
        return torch.fft.ifft2(v, norm="ortho")


@dataclass
class NearField:
    """Fresnel propagation over ``distance`` (m) at ``wavelength`` (m), sample pixel ``pixel_size`` (m).

    D u = IFFT2[ FFT2(u) * exp(-i pi lambda z |f|^2) ] (transfer function, no constant phase);
    unitary, so D* uses the conjugate kernel.
    """

    wavelength: float
    distance: float
    pixel_size: float
    size: int
    device: torch.device | str = "cpu"

    def __post_init__(self) -> None:
        f = torch.fft.fftfreq(self.size, d=self.pixel_size, dtype=torch.float64)
        f2 = f[:, None] ** 2 + f[None, :] ** 2
        phase = -math.pi * self.wavelength * self.distance * f2
        self.kernel = torch.polar(torch.ones_like(phase), phase).to(torch.complex64).to(self.device)

    def forward(self, u: Tensor) -> Tensor:
        return torch.fft.ifft2(torch.fft.fft2(u) * self.kernel.to(u.dtype))

    def adjoint(self, v: Tensor) -> Tensor:
        return torch.fft.ifft2(torch.fft.fft2(v) * self.kernel.conj().to(v.dtype))


class _Modulus(torch.autograd.Function):
    """sqrt(x) for x >= 0 whose derivative at x = 0 is 0 instead of infinity.

    Through ``intensity`` the modulus |Psi| = sqrt(|Psi|^2) has the derivative Psi / |Psi|, bounded
    but undefined at Psi = 0, where the chain rule of a plain ``sqrt`` gives inf * 0 = NaN. A zero
    derivative there is the limit of the PIE projection Psi (1 - d / (|Psi| + eps)) and of
    ``bh_objective``'s 1 / (|Psi| + eps): the objective's gradient is 0 at a model zero. The
    backward pass is made of differentiable operations, so Hessian-vector products work too.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor) -> Tensor:
        out = x.sqrt()
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:
        (out,) = ctx.saved_tensors
        positive = out > 0
        return torch.where(positive, grad / (2 * torch.where(positive, out, torch.ones_like(out))), 0.0)


def propagator(geometry: Geometry, size: int, device: torch.device | str) -> Propagator:
    """The propagator ``geometry`` implies for frames of ``size`` x ``size``."""
    if geometry.kind == "far":
        return FarField()
    return NearField(geometry.wavelength, geometry.distance, geometry.pixel_size, size, device)


def model_amplitude(far: Tensor) -> Tensor:
    """Model amplitude sqrt(sum_k |Psi_k|^2) (BATCH, M, M) of detector fields (BATCH, MODE, M, M).

    Safe at Psi = 0 under autograd (``_Modulus``): the gradient there is 0, not NaN.
    """
    power = intensity(far)
    return _Modulus.apply(power) if power.requires_grad else power.sqrt()


def amplitude_residual(amp: Tensor, measured: Tensor, mask: Tensor | None) -> Tensor:
    """sum over the batch of || mask * (|Psi| - sqrt(I)) ||^2 (a scalar tensor; no host sync)."""
    diff = (amp - measured).square()
    if mask is not None:
        diff = diff * mask
    return diff.sum()


def amplitude_projection_factor(amp: Tensor, measured: Tensor, mask: Tensor | None, eps: float = 1e-8) -> Tensor:
    """Factor (BATCH, M, M) that turns Psi into its projection onto measured amplitudes, minus one.

    Psi' = Psi * (1 + factor) with factor = sqrt(I) / |Psi| - 1; masked pixels get 0 (keep Psi).
    """
    factor = measured / (amp + eps) - 1
    if mask is not None:
        factor = factor * mask
    return factor


def _shifted_spectra(obj: Tensor, corner: Tensor, frac: Tensor, size: int, pad: int) -> tuple[Tensor, Tensor]:
    """exp(+2 pi i xi . frac) F(E_n O): spectra (BATCH, s, s) of the padded patches (s = M + 2 pad), and xi (s,)."""
    big = extract(obj, corner - pad, size + 2 * pad)
    return torch.fft.fft2(big) * shift_ramp(-frac, big.shape[-1]), frequencies(big.shape[-1], obj.device)


def _directional(xi: Tensor, delta: Tensor) -> Tensor:
    """2 pi i (xi . delta): the derivative of the patch ramp along ``delta`` (BATCH, 2) -> (BATCH, s, s)."""
    dot = delta[:, 0, None, None] * xi[None, :, None] + delta[:, 1, None, None] * xi[None, None, :]
    return torch.complex(torch.zeros_like(dot), 2 * math.pi * dot)


def patches_shift_derivative(
    obj: Tensor, corner: Tensor, frac: Tensor, size: int, pad: int, delta: Tensor, delta2: Tensor | None = None
) -> Tensor:
    """Shift derivatives (BATCH, M, M) of ``patches`` in the sub-pixel position (BH.md, seed 002 App. I).

    T(O; delta)          = d/dt S_{r + t delta} O = C F^-1[ 2 pi i (xi . delta) exp(2 pi i xi . frac) F(E_n O) ];
    T2(O; delta, delta2) = C F^-1[ (2 pi i)^2 (xi . delta)(xi . delta2) exp(2 pi i xi . frac) F(E_n O) ].
    The sign is + because ``patches`` samples O at x + r. ``delta``, ``delta2``: (BATCH, 2) pixels.
    """
    spec, xi = _shifted_spectra(obj, corner, frac, size, pad)
    spec = spec * _directional(xi, delta)
    if delta2 is not None:
        spec = spec * _directional(xi, delta2)
    return torch.fft.ifft2(spec)[..., pad : pad + size, pad : pad + size]


def patches_shift_gradient(
    obj: Tensor, corner: Tensor, frac: Tensor, size: int, pad: int, delta: Tensor | None = None
) -> Tensor:
    """Shift derivatives along both axes (BATCH, 2, M, M): T(O; e_j), or with ``delta`` T2(O; delta, e_j)."""
    spec, xi = _shifted_spectra(obj, corner, frac, size, pad)
    if delta is not None:
        spec = spec * _directional(xi, delta)
    eye = torch.eye(2, dtype=frac.dtype, device=frac.device)
    spec = torch.stack([spec * _directional(xi, eye[j].expand_as(frac)) for j in range(2)], 1)
    return torch.fft.ifft2(spec)[..., pad : pad + size, pad : pad + size]


def patches_shift_derivative_adjoint(
    values: Tensor, corner: Tensor, frac: Tensor, shape: tuple[int, int], pad: int, delta: Tensor
) -> Tensor:
    """T(.; delta)*: E_n* F^-1[ -2 pi i (xi . delta) exp(-2 pi i xi . frac) F(C* values) ] -> object (H, W)."""
    big = torch.nn.functional.pad(values, (pad, pad, pad, pad))
    xi = frequencies(big.shape[-1], values.device)
    spec = torch.fft.fft2(big) * (shift_ramp(-frac, big.shape[-1]) * _directional(xi, delta)).conj()
    return extract_adjoint(torch.fft.ifft2(spec), corner - pad, shape)
