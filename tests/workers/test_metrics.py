"""Metrics: invariances of cRMS, registration accuracy, FRC, NLLs at the truth."""

from __future__ import annotations

import numpy as np
import pytest

from workers import metrics
from workers.data import ScanData


def test_crms_ignores_global_phase_scale_and_shift(small_scan: ScanData) -> None:
    truth = small_scan.truth
    obj = truth["object"]
    moved = metrics.shift_image(obj * 0.7 * np.exp(1j * 1.3), np.array([1.3, -0.6]))
    out = metrics.truth_metrics(moved, np.zeros(2), truth)
    assert out["registration_shift"] == pytest.approx([-1.3, 0.6], abs=0.06)
    assert out["crms"] < 0.03
    assert out["assim"] > 0.95 and out["apsnr_db"] > 30


def test_crms_sees_real_errors(small_scan: ScanData) -> None:
    truth = small_scan.truth
    rng = np.random.default_rng(0)
    noisy = truth["object"] + 0.2 * (
        rng.standard_normal(truth["object"].shape) + 1j * rng.standard_normal(truth["object"].shape)
    )
    out = metrics.truth_metrics(noisy, np.zeros(2), truth)
    assert 0.15 < out["crms"] < 0.5
    flat = np.ones_like(truth["object"])
    assert metrics.truth_metrics(flat, np.zeros(2), truth)["crms"] > 0.1


def test_register_recovers_subpixel_shift() -> None:
    rng = np.random.default_rng(1)
    image = metrics.shift_image(rng.standard_normal((64, 64)), np.zeros(2))
    for shift in ([2.25, -3.7], [0.4, 0.0], [-5.0, 1.15]):
        moved = metrics.shift_image(image, -np.array(shift))
        assert metrics.register(image, moved) == pytest.approx(shift, abs=0.051)


def test_frc_of_identical_images_is_one() -> None:
    rng = np.random.default_rng(2)
    image = rng.standard_normal((32, 32))
    _, curve = metrics.frc(image, image)
    assert np.allclose(curve, 1.0)
    _, noise = metrics.frc(image, rng.standard_normal((32, 32)))
    assert abs(noise.mean()) < 0.2


def test_data_metrics_at_truth_are_at_noise_floor(small_scan: ScanData) -> None:
    t = small_scan.truth
    at_truth = metrics.data_metrics(small_scan, t["object"], t["probe"], t["positions"])
    wrong = metrics.data_metrics(small_scan, np.ones_like(t["object"]), t["probe"], t["positions"])
    assert at_truth["poisson_nll"] >= 0 and at_truth["gaussian_nll"] > 0
    assert at_truth["gaussian_nll"] == pytest.approx(0.25, rel=0.4), "sqrt of Poisson counts has variance 1/4"
    for key in ("amplitude_residual", "gaussian_nll", "poisson_nll"):
        assert wrong[key] > 3 * at_truth[key]


def test_position_error_removes_global_shift(small_scan: ScanData) -> None:
    t = small_scan.truth
    shifted = t["positions"] + np.array([3.0, -2.0])
    out = metrics.truth_metrics(t["object"], np.zeros(2), t, shifted)
    assert out["position_error_rms"] < 1e-9
    rng = np.random.default_rng(3)
    jittered = t["positions"] + rng.normal(0, 0.5, t["positions"].shape)
    assert metrics.truth_metrics(t["object"], np.zeros(2), t, jittered)["position_error_rms"] == pytest.approx(
        0.5 * np.sqrt(2), rel=0.2
    )


def test_crms_ignores_phase_ramp_and_twin_image(small_scan: ScanData) -> None:
    truth = small_scan.truth
    obj = truth["object"]
    yy, xx = np.mgrid[: obj.shape[0], : obj.shape[1]]
    ramped = metrics.shift_image(obj * np.exp(2j * np.pi * (0.004 * yy - 0.007 * xx)), np.array([0.7, -1.2]))
    out = metrics.truth_metrics(ramped, np.zeros(2), truth)
    assert out["phase_ramp"] == pytest.approx([-0.004, 0.007], abs=0.001)
    assert out["crms"] < 0.03 and not out["twin"]
    twin = metrics.truth_metrics(0.8 * obj[::-1, ::-1].conj(), np.zeros(2), truth)
    assert twin["twin"] and twin["crms"] < 0.03
    assert metrics.truth_metrics(obj, np.zeros(2), truth)["phase_ramp"] == pytest.approx([0, 0], abs=1e-9)


def test_a_large_shift_is_not_a_registration(small_scan: ScanData) -> None:
    """An object displaced by 40% of the scanned field overlaps the truth on too little to count as a match."""
    truth = small_scan.truth
    region = truth["object"].shape
    moved = metrics.shift_image(truth["object"], 0.4 * np.array(region))
    out = metrics.truth_metrics(moved, np.zeros(2), truth)
    assert out["registration_shift"] == [0.0, 0.0]
    assert out["crms"] > 0.3
    small = metrics.truth_metrics(metrics.shift_image(truth["object"], np.array([3.0, -2.0])), np.zeros(2), truth)
    assert small["crms"] < 0.03


def test_frc_of_noise_is_low(small_scan: ScanData) -> None:
    """Pure noise against the truth: no correlation beyond what registration's choice of shift gives, not even
    at low frequencies through the compared region's edge (the hard-edged comparison gave 0.16-0.37 there)."""
    truth = small_scan.truth
    low = []
    for seed in (3, 4, 5):
        rng = np.random.default_rng(seed)
        noise = rng.standard_normal(truth["object"].shape) + 1j * rng.standard_normal(truth["object"].shape)
        value = np.array(metrics.truth_metrics(noise, np.zeros(2), truth)["frc"]["value"])
        assert value[1:].mean() < 0.05
        low.append(value[1:10].mean())
    assert np.mean(low) < 0.15
