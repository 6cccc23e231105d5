"""Scan data and reconstruction state: the in-memory types every engine shares.

``ScanData`` holds what was measured and ``Geometry`` how (host, numpy only); the state being
reconstructed (torch) is ``workers.state.ReconState``. File formats live in ``workers.io``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from workers.errors import DataError
from workers.fluorescence import Fluorescence


@dataclass(frozen=True)
class Geometry:
    """Propagation geometry. ``pixel_size`` is the sample-plane pixel (m); 0 where unknown.

    Near field: ``distance`` is the effective propagation distance; ``focus_distance`` (m, focus
    to sample) is set for a cone-beam (Fresnel-scaling) setup read from a file, 0 otherwise.
    """

    kind: Literal["far", "near"] = "far"
    wavelength: float = 0.0
    distance: float = 0.0
    pixel_size: float = 0.0
    focus_distance: float = 0.0


@dataclass
class ScanData:
    """Measured ptychographic scan (host memory).

    intensities : (FRAME, M, M) float32, detector counts in detector layout (``workers.layout``).
    positions   : (FRAME, 2) float64, (row, col) of the probe window's top-left corner, pixels,
                  in the scan's own frame (any origin).
    mask        : (M, M) bool, True where a pixel is valid; None means all valid.
    probe       : (MODE, M, M) complex64 guess, or None.
    truth       : ground truth (``object``, ``probe``, ``positions``; ``elements/<name>`` maps where
                  fluorescence was simulated) of simulated scans.
    fluorescence: per-frame X-ray fluorescence counts (``workers.fluorescence``), or None.
    """

    intensities: np.ndarray
    positions: np.ndarray
    geometry: Geometry = field(default_factory=Geometry)
    mask: np.ndarray | None = None
    probe: np.ndarray | None = None
    source: str = "<memory>"
    truth: dict[str, np.ndarray] = field(default_factory=dict)
    fluorescence: Fluorescence | None = None

    def __post_init__(self) -> None:
        self.validate()

    @property
    def frame_size(self) -> int:
        return int(self.intensities.shape[-1])

    @property
    def n_frames(self) -> int:
        return int(self.intensities.shape[0])

    def validate(self) -> None:
        """Raise ``DataError`` naming the source and field for anything a reconstruction cannot use."""
        src, i = self.source, self.intensities
        if i.ndim != 3 or i.shape[1] != i.shape[2] or i.shape[0] == 0:
            raise DataError(f"{src}: intensities: expected shape (N, M, M) with N > 0, got {i.shape}")
        if not np.isfinite(i).all():
            raise DataError(f"{src}: intensities: {int((~np.isfinite(i)).sum())} values are NaN or infinite")
        if (i < 0).any():
            raise DataError(f"{src}: intensities: {int((i < 0).sum())} values are negative (min {i.min():g})")
        p = self.positions
        if p.shape != (i.shape[0], 2):
            raise DataError(f"{src}: positions: expected shape ({i.shape[0]}, 2) to match the frames, got {p.shape}")
        if not np.isfinite(p).all():
            raise DataError(f"{src}: positions: contains NaN or infinite values")
        span = float(np.ptp(p, axis=0).max())
        if span > 65536:
            raise DataError(
                f"{src}: positions: the scan spans {span:.3g} pixels; beyond any sane range "
                "(check the units and the pixel size)"
            )
        m = i.shape[-1]
        if self.mask is not None and self.mask.shape != (m, m):
            raise DataError(f"{src}: mask: expected shape ({m}, {m}), got {self.mask.shape}")
        if self.probe is not None and (self.probe.ndim != 3 or self.probe.shape[1:] != (m, m)):
            raise DataError(f"{src}: probe: expected shape (K, {m}, {m}), got {self.probe.shape}")
        g = self.geometry
        if g.kind == "near" and min(g.wavelength, g.distance, g.pixel_size) <= 0:
            raise DataError(f"{src}: geometry: near-field needs wavelength, distance and pixel size > 0, got {g}")
        if self.fluorescence is not None:
            self.fluorescence.validate(src, i.shape[0])

    def subset(self, index: np.ndarray | slice) -> ScanData:
        """The frames ``index`` of this scan (sharing geometry, mask and probe guess)."""
        xrf = None if self.fluorescence is None else self.fluorescence.subset(index)
        return ScanData(
            self.intensities[index], self.positions[index], self.geometry, self.mask, self.probe, self.source, {}, xrf
        )
