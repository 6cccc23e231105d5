"""Fluorescence counts: simulation, the two HDF5 layouts, xraylib's constants and every refusal."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from workers import physics, xrf_model
from workers.data import ScanData
from workers.errors import DataError
from workers.fluorescence import Fluorescence, default_sensitivity, mass_attenuation
from workers.io import load_scan, write_cxi
from workers.simulate import simulate


@pytest.fixture(scope="module")
def scan() -> ScanData:
    return simulate(probe_size=32, n_positions=16, overlap=0.5, photons=float("inf"), scan="raster", xrf=("Fe", "Zn"))


def test_simulated_counts_are_the_probe_weighted_sums_of_the_maps(scan: ScanData) -> None:
    """counts_ej = s_e sum_x |P(x)|^2 w_e(x + r_j), checked by an explicit loop over the frames at whole pixels."""
    assert scan.fluorescence is not None
    probe = np.abs(scan.truth["probe"][0]) ** 2
    s = default_sensitivity(("Fe", "Zn"), 12.398419843320026)
    m = probe.shape[0]
    positions = scan.truth["positions"]
    whole = np.flatnonzero((positions == np.round(positions)).all(1))
    assert len(whole) >= 1
    for j in whole:
        r, c = positions[j].astype(int)
        for e, name in enumerate(("Fe", "Zn")):
            w = scan.truth[f"elements/{name}"][r : r + m, c : c + m]
            assert scan.fluorescence.counts[e, j] == pytest.approx(s[e] * (probe * w).sum(), rel=1e-4)


def test_physical_link_makes_the_truth_absorption(scan: ScanData) -> None:
    mu = mass_attenuation(("Fe", "Zn"), 12.398419843320026)
    a = mu[0] * scan.truth["elements/Fe"] + mu[1] * scan.truth["elements/Zn"]
    assert np.allclose(np.abs(scan.truth["object"]), np.exp(-a / 2), atol=1e-5)
    assert 0.3 < a.max() < 0.7


def test_mass_attenuation_from_xraylib() -> None:
    """Fe at 10 keV: 170.6 cm^2/g (NIST XCOM total with coherent: 171)."""
    assert mass_attenuation(("Fe",), 10.0)[0] == pytest.approx(171, rel=0.02)


def test_cxi_round_trip_keeps_counts_names_and_maps(tmp_path: Path, scan: ScanData) -> None:
    write_cxi(tmp_path / "s.cxi", scan, scan.truth)
    back = load_scan(tmp_path / "s.cxi")
    assert back.fluorescence is not None and back.fluorescence.elements == ("Fe", "Zn")
    assert np.array_equal(back.fluorescence.counts, scan.fluorescence.counts)  # type: ignore[union-attr]
    assert np.array_equal(back.truth["elements/Zn"], scan.truth["elements/Zn"])
    assert back.subset(slice(2, 5)).fluorescence.counts.shape == (2, 3)  # type: ignore[union-attr]


def test_maps_layout_matched_by_index(tmp_path: Path, scan: ScanData) -> None:
    """XRF-Maps' fitted maps (channel, row, col), row-major = frame order; scatter channels dropped."""
    path = tmp_path / "maps.cxi"
    write_cxi(path, ScanData(scan.intensities, scan.positions, scan.geometry))
    counts = scan.fluorescence.counts  # type: ignore[union-attr]
    with h5py.File(path, "a") as f:
        fitted = np.concatenate([counts, np.ones((1, 16))]).reshape(3, 4, 4)
        f["MAPS/XRF_Analyzed/Fitted/Counts_Per_Sec"] = fitted
        f["MAPS/XRF_Analyzed/Fitted/Channel_Names"] = np.array([b"Fe", b"Zn_K", b"COHERENT_SCT_AMPLITUDE"])
    back = load_scan(path).fluorescence
    assert back is not None and back.elements == ("Fe", "Zn") and back.units == "counts/s"
    assert np.allclose(back.counts, counts)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda g: g.__delitem__("channel_names"), "xrf/channel_names: missing"),
        (lambda g: g["channel_names"].__setitem__(1, b"Qq"), "'Qq' is not an element symbol"),
        (lambda g: g.__setitem__("sensitivity", np.array([1.0, -1.0])), "xrf/sensitivity"),
    ],
)
def test_bad_fluorescence_is_refused_naming_file_and_field(tmp_path: Path, scan: ScanData, edit, message) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "bad.cxi"
    write_cxi(path, scan)
    with h5py.File(path, "a") as f:
        edit(f["xrf"])
    with pytest.raises(DataError, match=rf"bad.cxi: .*{message}"):
        load_scan(path)


def test_counts_must_match_the_frames(scan: ScanData) -> None:
    bad = Fluorescence(np.ones((2, 15), np.float32), ("Fe", "Zn"))
    with pytest.raises(DataError, match=r"x: xrf/counts: expected shape \(2, 16\)"):
        ScanData(scan.intensities, scan.positions, scan.geometry, source="x", fluorescence=bad)
    with pytest.raises(DataError, match="finite and >= 0"):
        Fluorescence(-np.ones((2, 16), np.float32), ("Fe", "Zn")).validate("x", 16)


@pytest.mark.parametrize("frac", [None, 0.3])
def test_fluorescence_operator_adjoint(frac: float | None) -> None:
    """<A u, v> = <u, A* v> for the counts operator, integer and sub-pixel positions."""
    g = torch.Generator().manual_seed(0)
    illum = torch.rand(8, 8, generator=g, dtype=torch.float64).float()
    u = torch.rand(2, 20, 20, generator=g)
    corner = torch.tensor([[3, 4], [6, 2], [5, 5]])
    f = None if frac is None else torch.full((3, 2), frac)
    scale = torch.tensor([2.0, 0.5])
    v = torch.rand(2, 3, generator=g)
    fwd = xrf_model.expected_counts(illum, u, corner, f, scale)
    adj = xrf_model.expected_counts_adjoint(illum, v, corner, f, scale, (20, 20))
    assert float((fwd * v).sum()) == pytest.approx(float((u * adj).sum()), rel=1e-5)
    assert physics.SUBPIXEL_PAD >= 1


def test_element_maps_render_beside_the_object(scan: ScanData) -> None:
    """A result's views include its element maps (read-back ``elements`` or a state's flat keys)."""
    import io

    from PIL import Image

    from workers.images import render_result, result_kinds

    truth = scan.truth
    result = {"object": truth["object"], "probe": truth["probe"], "positions": truth["positions"]}
    flat = result | {"elements/Fe": truth["elements/Fe"]}
    nested = result | {"elements": {"Fe": truth["elements/Fe"]}}
    assert result_kinds(flat) == result_kinds(nested) == ("amplitude", "phase", "probe", "elements/Fe")
    image = Image.open(io.BytesIO(render_result(nested, "elements/Fe")))
    assert image.width >= 384 and image.getextrema() != ((255, 255),) * 3


def test_element_metrics_against_the_truth(scan: ScanData) -> None:
    """The truth scores 0 error and FRC to Nyquist; a blurred map (a probe-sized Gaussian) does not."""
    from workers.xrf_metrics import element_metrics

    truth = scan.truth
    exact = {"origin": np.zeros(2), "elements": {"Fe": truth["elements/Fe"]}}
    good = element_metrics(exact, truth)
    assert good["Fe_map_error"] == 0 and good["Fe_frc05"] > 0.45 and 0 < good["probe_cutoff"] < 0.5
    fy, fx = np.fft.fftfreq(truth["object"].shape[0])[:, None], np.fft.fftfreq(truth["object"].shape[1])[None, :]
    blur = np.fft.ifft2(np.fft.fft2(truth["elements/Fe"]) * np.exp(-2 * (np.pi * 4) ** 2 * (fy**2 + fx**2))).real
    bad = element_metrics({"origin": np.zeros(2), "elements": {"Fe": blur}}, truth)
    assert bad["Fe_map_error"] > 0.01 and bad["Fe_frc05"] < 0.5 * good["Fe_frc05"]
