"""From wire units (metres, eV, detector pixels) to what engines use (sample-plane pixels).

Follows ``workers.io``'s CXI conventions: a position is the sample translation (x, y, z) in
metres in the lab frame, the probe moves by its negative, and the frame axes point along
``workers.io.DEFAULT_BASIS``; the sample-plane pixel is lambda z / (M p) in the far field.
"""

from __future__ import annotations

from workers.data import PLANCK_C, Geometry
from workers.stream.protocol import ScanStart

ELECTRONVOLT = 1.602176634e-19  # J


def scan_geometry(start: ScanStart, size: int, binning: int = 1) -> Geometry:
    """The geometry of frames cropped to ``size`` after ``binning`` x ``binning`` detector pixels."""
    wavelength = PLANCK_C / (start.energy_ev * ELECTRONVOLT)
    pixel = start.pixel_size_m * binning
    if start.propagation == "near":
        return Geometry("near", wavelength, start.distance_m, pixel)
    return Geometry("far", wavelength, start.distance_m, wavelength * start.distance_m / (size * pixel))
