"""Per-frame preprocessing between the decoder and the frame buffer.

Order: centre crop to the reconstruction size (first, so that a large detector costs only its
window), dark/background subtraction (clipped at 0), bad pixels zeroed (the engines' mask
excludes them), hot pixels and zingers replaced by their neighbours' median, optional binning.
A frame that cannot be used raises ``Rejected`` with a short reason the receiver counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from workers.errors import DataError
from workers.job import Preprocessing


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
    hot      : counts above which a pixel is implausible in that frame (overflow, a detector's
               bad-pixel marker): it is replaced by the median of its 3x3 neighbours, as the
               engines' mask is per scan, not per frame (None: no limit).
    zinger   : a pixel above ``zinger`` x the median of its 3x3 neighbours (and > 10 counts)
               is replaced by that median (cosmic rays); None disables it.
    size     : output size M after cropping (None: the largest centred square), before binning.
    centre   : (row, col) of the zero frequency on the detector (None: the frame centre).
    binning  : sum ``binning`` x ``binning`` pixels after cropping.
    saturation: counts above which a pixel is implausible (the detector's saturation value, from the
               scan's start): a frame with such a valid pixel in the window is rejected (``saturation``;
               a corrupt frame, most often), except where it holds the detector's invalid-pixel marker
               (the largest count of its unsigned dtype). None: no check.
    """

    dark: np.ndarray | None = None
    valid: np.ndarray | None = None
    hot: float | None = None
    zinger: float | None = None
    size: int | None = None
    centre: tuple[int, int] | None = None
    binning: int = 1
    saturation: int | None = None
    _windows: dict[tuple[int, int], tuple[slice, slice]] = field(default_factory=dict, init=False, repr=False)
    _references: dict[tuple[int, int], tuple[np.ndarray | None, np.ndarray | None]] = field(
        default_factory=dict, init=False, repr=False
    )

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
        _, valid = self.references(shape)
        if valid is None:
            return None
        if self.binning > 1:
            valid = _bin(valid.astype(np.float32), self.binning) == self.binning**2
        return valid

    def references(self, shape: tuple[int, int]) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The dark (float32) and valid mask cropped to the window of frames of ``shape`` (once per shape)."""
        found = self._references.get(shape)
        if found is None:
            for name, ref in (("dark", self.dark), ("valid-pixel mask", self.valid)):
                if ref is not None and ref.shape != shape:
                    raise Rejected("shape", f"frame {shape} does not match the {name} {ref.shape}")
            rows, cols = self.window(shape)
            dark = None if self.dark is None else np.asarray(self.dark[rows, cols], dtype=np.float32)
            valid = None if self.valid is None else np.asarray(self.valid[rows, cols], dtype=bool)
            found = self._references[shape] = (dark, valid)
        return found

    @property
    def converts(self) -> bool:
        """Whether a correction that needs floats (dark, hot pixels, zingers, binning) is set."""
        return any(x is not None for x in (self.dark, self.hot, self.zinger)) or self.binning > 1

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """The frame cropped, then corrected: float32, or, when only bad pixels (or nothing) correct
        unsigned counts, the counts themselves (a view of the raw frame when nothing does and it is
        not cropped: no copy, ``FrameBuffer.drain`` stacks a batch at a time, off the receive path; a
        crop is copied so that a buffered frame never keeps the whole detector message alive)."""
        if frame.ndim != 2:
            raise Rejected("shape", f"expected a 2-D frame, got shape {frame.shape}")
        rows, cols = self.window(frame.shape)
        dark, valid = self.references(frame.shape)
        crop = frame[rows, cols]
        if crop.dtype.kind == "u" and not self.converts:
            self._plausible(crop, valid)
            if valid is not None:
                return np.where(valid, crop, 0)
            return crop if crop.shape == frame.shape else crop.copy()
        self._plausible(crop, valid)
        out = crop.astype(np.float32)
        if crop.dtype.kind == "f" and not np.isfinite(out).all():
            raise Rejected("non-finite", f"{int((~np.isfinite(out)).sum())} NaN or infinite pixels")
        if dark is not None:
            out = np.clip(out - dark, 0, None)
        if crop.dtype.kind != "u" and (out < 0).any():
            raise Rejected("negative", f"{int((out < 0).sum())} negative pixels")
        if valid is not None:
            out[~valid] = 0
        hot = None if self.hot is None else out > self.hot
        if hot is not None and hot.any():
            out = np.where(hot, neighbour_median(out), out).astype(np.float32)
        if self.zinger is not None:
            out = remove_zingers(out, self.zinger)
        return _bin(out, self.binning) if self.binning > 1 else out

    def _plausible(self, crop: np.ndarray, valid: np.ndarray | None) -> None:
        """Reject a frame whose valid pixels in the window exceed the saturation value (one ``max`` when none do)."""
        limit = self.saturation
        if limit is None or not crop.size or crop.max() <= limit:
            return
        above = crop > limit
        if valid is not None:
            above &= valid
        if crop.dtype.kind == "u":
            above &= crop != np.iinfo(crop.dtype).max
        if above.any():
            raise Rejected("saturation", f"{int(above.sum())} pixels above the detector's saturation value {limit}")


def neighbour_median(frame: np.ndarray) -> np.ndarray:
    """The median of each pixel's 8 neighbours (edges repeated), same shape as ``frame``."""
    padded = np.pad(frame, 1, mode="edge")
    h, w = frame.shape
    neighbours = [padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    return np.median(np.stack(neighbours[:4] + neighbours[5:]), axis=0)


def remove_zingers(frame: np.ndarray, factor: float, floor: float = 10.0) -> np.ndarray:
    """Replace pixels above ``factor`` x their 3x3 neighbours' median (and above ``floor``) by that median."""
    median = neighbour_median(frame)
    zinger = (frame > factor * median) & (frame > floor)
    return np.where(zinger, median, frame).astype(np.float32)


def _bin(frame: np.ndarray, b: int) -> np.ndarray:
    m = frame.shape[0] // b * b
    return frame[:m, :m].reshape(m // b, b, m // b, b).sum(axis=(1, 3))


def _reference(path: str | None, what: str) -> np.ndarray | None:
    """A 2-D array from a .npy file, or a ``DataError`` naming the file and the problem."""
    if path is None:
        return None
    try:
        array = np.load(Path(path), allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: {what}: not a readable .npy array ({exc})") from None
    if array.ndim != 2 or not np.isfinite(array).all():
        raise DataError(f"{path}: {what}: expected a finite 2-D array, got shape {array.shape}")
    return array


def build_preprocessor(spec: Preprocessing) -> Preprocessor:
    """The ``Preprocessor`` of a job's preprocessing spec, its dark and bad-pixel files loaded."""
    bad = _reference(spec.bad_pixels, "bad pixels")
    return Preprocessor(
        dark=_reference(spec.dark, "dark"),
        valid=None if bad is None else bad == 0,
        hot=spec.hot,
        zinger=spec.zinger,
        size=spec.size,
        centre=spec.centre,
        binning=spec.binning,
    )
