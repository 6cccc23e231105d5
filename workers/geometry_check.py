"""Plausibility of a scan's propagation geometry: does a far-field reading of the file make sense?

CXI files of other tools do not record whether a setup is far or near field, and a near-field
scan read as far field reconstructs to nonsense without any error. Far-field ptychography
needs overlapping illumination that the detector samples: with the far-field sample-plane
pixel dx = lambda z / (M p), the beam must be narrower than half the field of view (M / 2
pixels, oversampling >= 2) and the step between neighbouring positions smaller than the beam.
So a median nearest-neighbour step above M / 2 pixels cannot be a far-field scan; the usual
reason is a near-field (holography, often cone-beam) setup whose sample pixel is far larger.
"""

from __future__ import annotations

import numpy as np

from workers.data import ScanData


def median_step(positions: np.ndarray, samples: int = 512) -> float:
    """Median distance (pixels) from a position (N, 2) to its nearest neighbour; 0 for one position.

    Taken over at most ``samples`` evenly strided positions (each against all N), so the cost is
    O(N) however long the scan.
    """
    n = len(positions)
    if n < 2:
        return 0.0
    picked = np.arange(0, n, max(1, n // samples))
    dist = np.sqrt(((positions[picked, None, :] - positions[None, :, :]) ** 2).sum(-1))
    dist[np.arange(len(picked)), picked] = np.inf
    return float(np.median(dist.min(1)))


def far_field_warning(data: ScanData) -> str | None:
    """One line when ``data`` is read as far field but its steps are too large for that; else None.

    Only files with physical units are judged (a far-field geometry with a wavelength).
    """
    g = data.geometry
    if g.kind != "far" or g.wavelength <= 0 or g.pixel_size <= 0:
        return None
    step, half = median_step(data.positions), data.frame_size / 2
    if step <= half:
        return None
    return (
        f"{data.source}: geometry: read as far field, the median step between positions is {step:.0f} px "
        f"(sample pixel {g.pixel_size:.3g} m), more than half the {data.frame_size}-px frame, so the beams "
        "could not overlap; this looks like a near-field scan: pass --near-field (and --focus-distance)"
    )
