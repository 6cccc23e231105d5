"""Per-frame preprocessing between the decoder and the frame buffer.

Order: dark/background subtraction (clipped at 0), bad/hot-pixel masking, zinger removal,
centre crop to the reconstruction size, optional binning. A frame that cannot be used
raises ``Rejected`` with a short reason the receiver counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class Rejected(ValueError):
    """A frame refused by preprocessing; ``reason`` is the counter's key."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass
class Preprocessor:
    """Frame (Y, X) raw counts -> (M, M) intensities, zero frequency centred.

    dark     : (Y, X) counts subtracted from every frame, or None.
    valid    : (Y, X) bool, False on bad pixels (set to 0; the engine mask excludes them).
    hot      : counts above which a pixel is treated as bad in that frame (None: no limit).
    zinger   : a pixel above ``zinger`` x the median of its 3x3 neighbours (and > 10 counts)
               is replaced by that median (cosmic rays); None disables it.
    size     : output size M after cropping (None: the largest centred square), before binning.
    centre   : (row, col) of the zero frequency on the detector (None: the frame centre).
    binning  : sum ``binning`` x ``binning`` pixels after cropping.
    """

    dark: np.ndarray | None = None
    valid: np.ndarray | None = None
    hot: float | None = None
    zinger: float | None = None
    size: int | None = None
    centre: tuple[int, int] | None = None
    binning: int = 1
    _windows: dict[tuple[int, int], tuple[slice, slice]] = field(default_factory=dict, init=False, repr=False)

    def output_size(self, shape: tuple[int, int]) -> int:
        return (self.size or min(shape)) // self.binning

    def window(self, shape: tuple[int, int]) -> tuple[slice, slice]:
        """The crop window on the detector for frames of ``shape`` (computed once per shape)."""
        found = self._windows.get(shape)
        if found is None:
            found = self._windows[shape] = self._window(shape)
        return found

    def _window(self, shape: tuple[int, int]) -> tuple[slice, slice]:
        m = self.size or min(shape)
        cy, cx = self.centre or (shape[0] // 2, shape[1] // 2)
        top, left = cy - m // 2, cx - m // 2
        if top < 0 or left < 0 or top + m > shape[0] or left + m > shape[1]:
            raise Rejected("shape", f"a {m} x {m} crop around {(cy, cx)} does not fit a {shape} frame")
        return slice(top, top + m), slice(left, left + m)

    def mask(self, shape: tuple[int, int]) -> np.ndarray | None:
        """The valid-pixel mask (M, M) of the output frames, or None when every pixel is valid."""
        if self.valid is None:
            return None
        rows, cols = self.window(shape)
        valid = self.valid[rows, cols]
        if self.binning > 1:
            valid = _bin(valid.astype(np.float32), self.binning) == self.binning**2
        return valid

    @property
    def corrects(self) -> bool:
        """Whether any correction (dark, bad/hot pixels, zingers, binning) changes pixel values."""
        return any(x is not None for x in (self.dark, self.valid, self.hot, self.zinger)) or self.binning > 1

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """The cropped frame: float32, or, when nothing corrects unsigned counts, a view of the raw frame
        (no copy: ``FrameBuffer.drain`` converts a batch at a time, off the receive path)."""
        if frame.ndim != 2:
            raise Rejected("shape", f"expected a 2-D frame, got shape {frame.shape}")
        if frame.dtype.kind == "u" and not self.corrects:
            rows, cols = self.window(frame.shape)
            return frame[rows, cols]
        out = frame.astype(np.float32)
        if frame.dtype.kind == "f" and not np.isfinite(out).all():
            raise Rejected("non-finite", f"{int((~np.isfinite(out)).sum())} NaN or infinite pixels")
        if self.dark is not None:
            if self.dark.shape != out.shape:
                raise Rejected("shape", f"frame {out.shape} does not match the dark {self.dark.shape}")
            out = np.clip(out - self.dark, 0, None)
        if frame.dtype.kind != "u" and (out < 0).any():
            raise Rejected("negative", f"{int((out < 0).sum())} negative pixels")
        bad = None if self.valid is None else ~self.valid
        if self.hot is not None:
            hot = out > self.hot
            bad = hot if bad is None else bad | hot
        if bad is not None:
            out[bad] = 0
        if self.zinger is not None:
            out = remove_zingers(out, self.zinger)
        rows, cols = self.window(out.shape)
        out = out[rows, cols]
        return _bin(out, self.binning) if self.binning > 1 else np.ascontiguousarray(out)


def remove_zingers(frame: np.ndarray, factor: float, floor: float = 10.0) -> np.ndarray:
    """Replace pixels above ``factor`` x their 3x3 neighbours' median (and above ``floor``) by that median."""
    padded = np.pad(frame, 1, mode="edge")
    h, w = frame.shape
    neighbours = [padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    median = np.median(np.stack(neighbours[:4] + neighbours[5:]), axis=0)
    zinger = (frame > factor * median) & (frame > floor)
    return np.where(zinger, median, frame).astype(np.float32)


def _bin(frame: np.ndarray, b: int) -> np.ndarray:
    m = frame.shape[0] // b * b
    return frame[:m, :m].reshape(m // b, b, m // b, b).sum(axis=(1, 3))
