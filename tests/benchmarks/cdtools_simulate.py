"""Simulate a far-field scan with cdtools (the peer's forward model and CXI writer), for bench_start.

Runs in the peers venv (tests/benchmarks/PEERS.md), not the project's:

    /work/peers/bin/python tests/benchmarks/cdtools_simulate.py IN.npz OUT.cxi OUT_PROBE.npy

IN.npz holds ``object`` (H, W) complex, ``corners`` (N, 2) integer probe-window corners in the
object array (cdtools' pixel translations), ``photons`` and ``seed``. The probe is a zone-plate
beam made here in cdtools' own layout: an annular pupil (radius 0.16 of the detector's
frequencies, central stop 0.35 of it) with a slightly astigmatic defocus that spreads the beam
over about 35% of the frame, back-propagated with cdtools' inverse far-field propagator. The
exit waves are cdtools' ``ptycho_2D_round``, the patterns its far-field propagator's intensity
with Poisson noise; the translations come from cdtools' ``pixel_to_translations`` with the
exit-wave basis of a 2 m, 75 um detector at 12.4 keV, and cdtools writes the CXI file.
"""

from __future__ import annotations

import sys

import numpy as np
import torch as t
from cdtools.datasets import Ptycho2DDataset
from cdtools.tools import initializers, interactions, propagators

WAVELENGTH, DISTANCE, PIXEL = 1e-10, 2.0, 75e-6


def main(inp: str, out: str, probe_out: str) -> None:
    z = np.load(inp)
    obj = t.as_tensor(z["object"].astype(np.complex64))
    corners = t.as_tensor(z["corners"].astype(np.float64))
    photons, rng = float(z["photons"]), np.random.default_rng(int(z["seed"]))
    m = int(z["size"])
    f = (np.arange(m) - m // 2) / m  # centred frequencies, cycles/pixel (cdtools' detector layout)
    fy, fx = f[:, None], f[None, :]
    r2 = fy**2 + fx**2
    outer = 0.16
    pupil = ((r2 < outer**2) & (r2 > (0.35 * outer) ** 2)).astype(np.complex128)
    c = 0.35 * m / (2 * outer)
    pupil *= np.exp(1j * np.pi * (1.08 * c * fy**2 + 0.92 * c * fx**2))
    probe = propagators.inverse_far_field(t.as_tensor(pupil.astype(np.complex64)))
    probe = probe * np.sqrt(photons / float((probe.abs() ** 2).sum()))

    det_basis = t.tensor([[0.0, -PIXEL], [-PIXEL, 0.0], [0.0, 0.0]])
    basis = initializers.exit_wave_geometry(det_basis, (m, m), WAVELENGTH, DISTANCE)
    translations = interactions.pixel_to_translations(basis.to(t.float64), corners)
    exit_waves = interactions.ptycho_2D_round(probe, obj, corners.round().to(t.int64))
    clean = (propagators.far_field(exit_waves).abs() ** 2).numpy().astype(np.float64)
    patterns = rng.poisson(clean).astype(np.float32)
    geometry = {"distance": DISTANCE, "basis": det_basis}
    Ptycho2DDataset(translations, patterns, wavelength=WAVELENGTH, detector_geometry=geometry).to_cxi(out)
    np.save(probe_out, probe.numpy()[None])


if __name__ == "__main__":
    main(*sys.argv[1:4])
