"""Probe start: the data-derived search finds a ring beam's width; user files and optics parameters."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
from pydantic import ValidationError

from workers.data import ScanData
from workers.errors import DataError
from workers.probe_start import ProbeStart, beam_diameter, initial_probe
from workers.simulate import simulate


@pytest.fixture(scope="module")
def ring_scan() -> ScanData:
    """A defocused zone-plate beam (rings, ~50% of the frame), 32 px frames, no probe guess."""
    return simulate(probe_size=32, n_positions=64, photons=1e6, probe_kind="zone-plate-50", seed=3)


def test_search_finds_a_ring_beams_width(ring_scan: ScanData) -> None:
    assert ring_scan.probe is None
    probe, record = initial_probe(ring_scan)
    assert record.startswith("data: ")
    true = beam_diameter(ring_scan.truth["probe"])
    assert beam_diameter(probe) == pytest.approx(true, rel=0.25), record
    assert probe.shape == (1, 32, 32) and probe.dtype == np.complex64
    mean_power = ring_scan.intensities.sum(axis=(1, 2)).mean()
    assert (np.abs(probe) ** 2).sum() == pytest.approx(mean_power, rel=1e-4)


def test_scan_files_guess_is_used_and_modes_added(tiny_scan: ScanData) -> None:
    guess = tiny_scan.truth["probe"]
    data = ScanData(tiny_scan.intensities, tiny_scan.positions, tiny_scan.geometry, probe=guess)
    probe, record = initial_probe(data, n_modes=3)
    assert record == "guess in file" and probe.shape == (3, 32, 32)
    assert abs(np.vdot(probe[0], guess[0])) / (np.linalg.norm(probe[0]) * np.linalg.norm(guess[0])) > 0.999


def _write(path: Path, kind: str, probe: np.ndarray) -> None:
    if kind == "npy":
        np.save(path, probe)
    elif kind == "npz":
        np.savez(path, probe=probe)
    elif kind == "ptychodus":  # product file: (OPR mode, incoherent mode, Y, X) at /probe
        with h5py.File(path, "w") as f:
            f["probe"] = probe[None]
            f["opr_weights"] = np.ones((1, 1))
            f["probe"].attrs["pixel_width_m"] = 1e-8
    else:
        with h5py.File(path, "w") as f:
            f[kind] = probe


FORMATS = {
    "result.h5": "probe",
    "scan.cxi": "entry_1/instrument_1/source_1/probe",
    "other.cxi": "entry_1/probe_1/data",
    "product.h5": "ptychodus",
    "probe.npy": "npy",
    "probe.npz": "npz",
}


@pytest.mark.parametrize("name", FORMATS)
def test_probe_file_formats(tmp_path: Path, tiny_scan: ScanData, name: str) -> None:
    truth = tiny_scan.truth["probe"]
    path = tmp_path / name
    _write(path, FORMATS[name], truth)
    probe, record = initial_probe(tiny_scan, start=ProbeStart(file=str(path)))
    assert record == f"file: {path}"
    scale = np.vdot(truth, probe) / np.vdot(truth, truth)
    assert np.allclose(probe, scale * truth, atol=1e-3 * np.abs(probe).max())


def test_bad_probe_files_name_the_file_and_field(tmp_path: Path, tiny_scan: ScanData) -> None:
    wrong = tmp_path / "wrong.h5"
    _write(wrong, "probe", np.ones((1, 48, 48), np.complex64))
    with pytest.raises(DataError, match=r"wrong\.h5: probe: expected shape \(K, 32, 32\)"):
        initial_probe(tiny_scan, start=ProbeStart(file=str(wrong)))
    empty = tmp_path / "empty.cxi"
    with h5py.File(empty, "w") as f:
        f["entry_1/data_1/data"] = np.zeros((1, 32, 32))
    with pytest.raises(DataError, match=r"empty\.cxi: probe: none of probe, entry_1/instrument_1/source_1/probe"):
        initial_probe(tiny_scan, start=ProbeStart(file=str(empty)))
    several = tmp_path / "several.npz"
    np.savez(several, a=np.ones((32, 32)), b=np.ones((32, 32)))
    with pytest.raises(DataError, match=r"several\.npz: probe: no 'probe' array"):
        initial_probe(tiny_scan, start=ProbeStart(file=str(several)))
    with pytest.raises(DataError, match=r"missing\.npy: probe: cannot read"):
        initial_probe(tiny_scan, start=ProbeStart(file=str(tmp_path / "missing.npy")))


def test_optics_parameters(ring_scan: ScanData) -> None:
    disc, record = initial_probe(ring_scan, start=ProbeStart(diameter=12))
    assert record == "optics: diameter 12 px"
    assert beam_diameter(disc) == pytest.approx(12, rel=0.1)
    g = ring_scan.geometry
    defocus = 40 * g.pixel_size**2 / g.wavelength  # a quadratic pupil phase of 40 px^2
    wide, record = initial_probe(ring_scan, start=ProbeStart(defocus=defocus))
    assert record.startswith("optics: data pupil, defocus")
    assert beam_diameter(wide) > 1.25 * beam_diameter(initial_probe(ring_scan, start=ProbeStart(defocus=1e-12))[0])
    curved, _ = initial_probe(ring_scan, start=ProbeStart(diameter=12, defocus=defocus))
    assert np.allclose(np.abs(curved), np.abs(disc), atol=1e-3 * np.abs(disc).max())
    with pytest.raises(ValidationError):
        ProbeStart(file="x.h5", diameter=3)


def test_near_field_search_picks_a_back_propagated_hologram() -> None:
    data = simulate(probe_size=32, n_positions=36, photons=1e6, near_field=True, seed=4)
    probe, record = initial_probe(data)
    assert record.startswith("data: ") and probe.shape == (1, 32, 32)
    true = data.truth["probe"][0]
    overlap = abs(np.vdot(probe[0], true)) / (np.linalg.norm(probe[0]) * np.linalg.norm(true))
    flat = np.full_like(true, 1.0)
    assert overlap > abs(np.vdot(flat, true)) / (np.linalg.norm(flat) * np.linalg.norm(true)), record


def test_start_power_ignores_masked_pixels(ring_scan: ScanData) -> None:
    """Masked pixels holding garbage (1e12 counts) do not scale the start probe: its power is the valid pixels'."""
    mask = np.ones((32, 32), dtype=bool)
    mask[14:18, 14:18] = False
    clean = replace(ring_scan, mask=mask)
    frames = ring_scan.intensities.copy()
    frames[:, ~mask] = 1e12
    dirty = replace(clean, intensities=frames)
    power = [float((np.abs(initial_probe(d)[0]) ** 2).sum()) for d in (clean, dirty)]
    valid = float(ring_scan.intensities[:, mask].sum(1).mean())
    assert power[1] == pytest.approx(power[0], rel=1e-6)
    assert power[0] == pytest.approx(valid, rel=1e-3)
