"""Frame layouts: what a detector records versus what the forward model computes.

Detector layout (files, the wire, ``ScanData.intensities``, masks): what the detector
records. A far-field pattern has its zero frequency near the centre, at index
(M // 2, M // 2); a near-field hologram is a real-space image of the beam.

Model layout (inside the engines, ``workers.physics``): a far-field pattern has its zero
frequency at index [0, 0] (what an unshifted FFT gives); a near-field hologram is the same
real-space image as on the detector.

Converting happens once, at the boundary, through these two functions and nowhere else.
They accept numpy arrays and torch tensors (frames ``(..., M, M)``); numpy callers never load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, TypeVar

import numpy as np

if TYPE_CHECKING:
    import torch

Frames = TypeVar("Frames", np.ndarray, "torch.Tensor")
Kind = Literal["far", "near"]


def _shift(frames: Frames, kind: str, inverse: bool) -> Frames:
    if kind == "near":
        return frames
    if kind != "far":
        raise ValueError(f"propagation must be 'far' or 'near', got {kind!r}")
    if isinstance(frames, np.ndarray):
        op_np = np.fft.ifftshift if inverse else np.fft.fftshift
        return op_np(frames, axes=(-2, -1))
    import torch  # only a tensor gets here, so torch is loaded already

    op = torch.fft.ifftshift if inverse else torch.fft.fftshift
    return op(frames, dim=(-2, -1))


def to_model(frames: Frames, kind: Kind | str) -> Frames:
    """Detector layout -> model layout (far field: zero frequency moved from the centre to [0, 0])."""
    return _shift(frames, kind, inverse=True)


def to_detector(frames: Frames, kind: Kind | str) -> Frames:
    """Model layout -> detector layout (far field: zero frequency moved from [0, 0] to the centre)."""
    return _shift(frames, kind, inverse=False)
