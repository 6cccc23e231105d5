"""Scan and result files: CXI round trip, the real datasets in shared/data, and every refusal."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from workers.data import Geometry, ScanData
from workers.errors import DataError
from workers.io import load_scan, read_result, write_cxi, write_result


def test_cxi_round_trip(tmp_path: Path, small_scan: ScanData) -> None:
    path = tmp_path / "scan.cxi"
    mask = np.ones((64, 64), bool)
    mask[3, 5] = False
    data = ScanData(small_scan.intensities, small_scan.positions, small_scan.geometry, mask, None, "x")
    write_cxi(path, data, small_scan.truth)
    back = load_scan(path)
    assert np.array_equal(back.intensities, data.intensities)
    assert np.allclose(back.positions, data.positions, atol=1e-6)
    assert back.geometry.kind == "far"
    assert back.geometry.pixel_size == pytest.approx(data.geometry.pixel_size)
    assert back.geometry.wavelength == pytest.approx(data.geometry.wavelength)
    assert np.array_equal(back.mask, mask)
    assert np.array_equal(back.truth["object"], small_scan.truth["object"])


def test_near_field_round_trip(tmp_path: Path) -> None:
    from workers.simulate import simulate

    data = simulate(probe_size=32, n_positions=16, overlap=0.5, near_field=True, seed=3)
    write_cxi(tmp_path / "nf.cxi", data, data.truth)
    back = load_scan(tmp_path / "nf.cxi")
    assert back.geometry == pytest.approx(data.geometry) or back.geometry.kind == "near"
    assert back.geometry.distance == pytest.approx(data.geometry.distance)
    assert np.allclose(back.positions, data.positions, atol=1e-6)


def test_petra_near_field_loads(shared_data: str) -> None:
    data = load_scan(os.path.join(shared_data, "petra_p25_nearfield.cxi"), near_field=True, focus_distance=3.65e-3)
    assert data.intensities.shape == (200, 100, 100)
    assert data.geometry.kind == "near"
    assert data.geometry.pixel_size == pytest.approx(178.7e-9, rel=1e-3)
    assert data.geometry.distance == pytest.approx(3.638e-3, rel=1e-3)
    assert int((~data.mask).sum()) == 5
    spacing = np.sort(np.linalg.norm(data.positions[:, None] - data.positions[None], axis=-1), 1)[:, 1]
    assert np.median(spacing) * data.geometry.pixel_size == pytest.approx(1.19e-6, rel=0.05)


def test_tike_siemens_star_loads(shared_data: str) -> None:
    data = load_scan(os.path.join(shared_data, "tike_siemens_star.npz.bz2"))
    assert data.intensities.shape == (516, 128, 128)
    assert data.probe is not None and data.probe.shape == (1, 128, 128)
    mean = data.intensities.mean(0)
    yy, xx = np.mgrid[:128, :128]
    centroid = ((mean * yy).sum() / mean.sum(), (mean * xx).sum() / mean.sum())
    assert centroid == pytest.approx((64, 64), abs=10), "zero frequency must be moved to the centre"


def test_result_round_trip(tmp_path: Path) -> None:
    state = {
        "object": np.ones((10, 12), np.complex64),
        "probe": np.ones((2, 4, 4), np.complex64),
        "positions": np.zeros((3, 2)),
        "origin": np.array([1.0, 2.0]),
    }
    write_result(
        tmp_path / "r.h5", state, loss=np.array([0.5, 0.25]), time_s=np.array([1.0, 2.0]), attrs={"engine": "epie"}
    )
    back = read_result(tmp_path / "r.h5")
    assert back["object"].shape == (10, 12) and back["probe"].dtype == np.complex64
    assert back["loss"].tolist() == [0.5, 0.25] and back["attrs"]["engine"] == "epie"
    assert back["origin"].tolist() == [1.0, 2.0]


def _minimal_cxi(path: Path, **replace: np.ndarray | None) -> Path:
    fields = {
        "entry_1/data_1/data": np.ones((4, 8, 8), np.float32),
        "entry_1/sample_1/geometry_1/translation": np.zeros((4, 3)),
        "entry_1/instrument_1/detector_1/distance": np.float64(1.0),
        "entry_1/instrument_1/detector_1/x_pixel_size": np.float64(75e-6),
        "entry_1/instrument_1/source_1/energy": np.float64(1.6e-15),
    }
    fields.update(replace)
    with h5py.File(path, "w") as f:
        for key, value in fields.items():
            if value is not None:
                f[key] = value
    return path


def test_minimal_cxi_reads(tmp_path: Path) -> None:
    data = load_scan(_minimal_cxi(tmp_path / "ok.cxi"))
    assert data.n_frames == 4 and data.probe is None


@pytest.mark.parametrize(
    ("replace", "message"),
    [
        ({"entry_1/data_1/data": None}, "data: missing"),
        ({"entry_1/sample_1/geometry_1/translation": None}, "translation: missing"),
        ({"entry_1/instrument_1/detector_1/distance": None}, "distance: missing"),
        ({"entry_1/instrument_1/source_1/energy": None}, "energy: missing"),
        ({"entry_1/instrument_1/detector_1/distance": np.float64(-1)}, "must be a positive number"),
        ({"entry_1/sample_1/geometry_1/translation": np.zeros((3, 3))}, "3 positions for 4 frames"),
        ({"entry_1/sample_1/geometry_1/translation": np.zeros((4,))}, "translation: expected shape"),
        ({"entry_1/data_1/data": np.ones((8, 8), np.float32)}, "expected a stack of frames"),
        ({"entry_1/data_1/data": np.full((4, 8, 8), np.nan, np.float32)}, "NaN"),
        ({"entry_1/data_1/data": -np.ones((4, 8, 8), np.float32)}, "negative"),
        ({"entry_1/sample_1/geometry_1/translation": np.array([[0, 0, 0]] * 3 + [[1.0, 0, 0]])}, "sane range"),
        ({"entry_1/instrument_1/detector_1/basis_vectors": np.zeros((3, 2))}, "basis_vectors"),
    ],
)
def test_bad_cxi_refused_with_reason(tmp_path: Path, replace: dict, message: str) -> None:
    path = _minimal_cxi(tmp_path / "bad.cxi", **replace)
    with pytest.raises(DataError, match=message) as info:
        load_scan(path)
    assert str(path) in str(info.value)


def test_not_hdf5_refused(tmp_path: Path) -> None:
    path = tmp_path / "junk.cxi"
    path.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(DataError, match="not a readable HDF5"):
        load_scan(path)
    with pytest.raises(DataError, match="no such file"):
        load_scan(tmp_path / "absent.cxi")
    bad_npz = tmp_path / "x.npz"
    np.savez(bad_npz, data=np.ones((2, 4, 4)))
    with pytest.raises(DataError, match="scan: missing"):
        load_scan(bad_npz)


def test_scan_data_validation() -> None:
    ok = np.ones((2, 4, 4), np.float32)
    with pytest.raises(DataError, match="positions: expected shape"):
        ScanData(ok, np.zeros((3, 2)))
    with pytest.raises(DataError, match="mask: expected shape"):
        ScanData(ok, np.zeros((2, 2)), mask=np.ones((3, 3), bool))
    with pytest.raises(DataError, match="near-field needs"):
        ScanData(ok, np.zeros((2, 2)), Geometry("near"))
    with pytest.raises(DataError, match="expected shape \\(N, M, M\\)"):
        ScanData(np.ones((2, 4, 5), np.float32), np.zeros((2, 2)))


def test_cone_beam_near_field_round_trip(tmp_path: Path) -> None:
    """A Fresnel-scaled near-field scan written as CXI keeps its real detector distance, pixel and focus."""
    from workers.simulate import simulate

    data = simulate(probe_size=32, n_positions=10, near_field=True, seed=4)
    focus, z = 3.65e-3, 1.12
    mag = (focus + z) / focus
    g = Geometry("near", data.geometry.wavelength, z / mag, 55e-6 / mag, focus)
    cone = ScanData(data.intensities, data.positions, g)
    write_cxi(tmp_path / "c.cxi", cone)
    with h5py.File(tmp_path / "c.cxi") as f:
        assert f["entry_1/instrument_1/detector_1/distance"][()] == pytest.approx(z)
        assert f["entry_1/instrument_1/detector_1/x_pixel_size"][()] == pytest.approx(55e-6)
    back = load_scan(tmp_path / "c.cxi")
    assert back.geometry.kind == "near" and back.geometry.focus_distance == pytest.approx(focus)
    assert back.geometry.distance == pytest.approx(g.distance)
    assert back.geometry.pixel_size == pytest.approx(g.pixel_size)
    np.testing.assert_allclose(back.positions, data.positions, atol=1e-6)
