"""The command line: simulate -> reconstruct -> evaluate, JSON output, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from service.cli import main


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service.cli", *args], capture_output=True, text=True, timeout=300)


def test_simulate_reconstruct_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scan, out = str(tmp_path / "s.cxi"), str(tmp_path / "r.h5")
    assert main(["simulate", scan, "--probe-size", "32", "--positions", "36", "--overlap", "0.75", "--json"]) == 0
    sim = json.loads(capsys.readouterr().out)
    assert sim["frames"] == 36 and sim["frame_size"] == 32
    assert main(["reconstruct", scan, "-o", out, "--engine", "rpie", "--iterations", "20", "--json", "--quiet"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["iterations"] == 20 and rec["device"] == "cpu"
    assert main(["evaluate", out, "--truth", scan, "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    for key in (
        "amplitude_residual",
        "gaussian_nll",
        "poisson_nll",
        "crms",
        "frc",
        "apsnr_db",
        "assim",
        "position_error_rms",
    ):
        assert key in ev
    assert ev["crms"] < 0.5 and ev["amplitude_residual"] < 0.05


def test_reconstruct_writes_design_layout(tmp_path: Path) -> None:
    import h5py

    scan, out = str(tmp_path / "s.cxi"), str(tmp_path / "r.h5")
    assert main(["simulate", scan, "--probe-size", "32", "--positions", "16"]) == 0
    args = ["reconstruct", scan, "-o", out, "--engine", "epie", "--iterations", "3", "--modes", "2", "--quiet"]
    assert main(args) == 0
    with h5py.File(out) as f:
        assert f["object"].dtype == "complex64" and f["object"].ndim == 2
        assert f["probe"].shape == (2, 32, 32)
        assert f["positions"].shape == (16, 2) and f["positions"].dtype == "float64"
        assert f["history/loss"].shape == (3,) and f["history/time_s"].shape == (3,)
        for attr in (
            "engines",
            "iterations",
            "device",
            "pixel_size",
            "frames_received",
            "frames_used",
            "version",
            "input_file",
        ):
            assert attr in f.attrs, attr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["reconstruct", "absent.cxi", "-o", "x.h5", "--engine", "epie"], "absent.cxi: no such file"),
        (["reconstruct", "{scan}", "-o", "x.h5", "--engine", "epie", "--device", "cuda"], "CUDA is not available"),
        (["reconstruct", "{scan}", "-o", "x.h5", "--engine", "rpie", "--option", "alpha=7"], "alpha"),
        (["reconstruct", "{scan}", "-o", "x.h5", "--engine", "epie", "--option", "nonsense=1"], "nonsense"),
        (["evaluate", "{scan}", "--truth", "{scan}"], "not a PtychoStream result"),
        (["reconstruct", "{scan}", "-o", "x.h5", "--modes", "0"], "modes: Input should be greater than or equal to 1"),
        (["reconstruct", "{scan}", "-o", "x.h5", "--engine", "epie", "--schedule", "rpie:3"], "not both"),
        (["reconstruct", "{scan}", "-o", "x.h5", "--schedule", "rpie:3,bh:4"], "stage 2 'bh:4': unknown engine"),
        (["reconstruct", "{scan}", "-o", "absent/x.h5", "--engine", "epie"], "output folder"),
        (["simulate", "x.cxi", "--probe-size", "0"], "--probe-size must be at least 8, got 0"),
        (["simulate", "absent/x.cxi"], "output folder"),
    ],
)
def test_errors_are_one_clear_line(tmp_path: Path, args: list[str], message: str) -> None:
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    scan = tmp_path / "s.cxi"
    assert main(["simulate", str(scan), "--probe-size", "16", "--positions", "4"]) == 0
    proc = run(*(a.replace("{scan}", str(scan)) for a in args))
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_engine_is_refused_by_argparse() -> None:
    proc = run("reconstruct", "x.cxi", "-o", "y.h5", "--engine", "magic")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_corrupt_chunk_names_file_and_field(tmp_path: Path) -> None:
    import h5py

    scan = tmp_path / "s.cxi"
    assert main(["simulate", str(scan), "--probe-size", "16", "--positions", "8"]) == 0
    with h5py.File(scan) as f:
        chunk = f["entry_1/instrument_1/detector_1/data"].id.get_chunk_info(3)
    with open(scan, "r+b") as fh:
        fh.seek(chunk.byte_offset)
        fh.write(b"\xff" * min(chunk.size, 64))
    proc = run("reconstruct", str(scan), "-o", str(tmp_path / "r.h5"), "--engine", "epie")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{scan}: entry_1/data_1/data: unreadable" in proc.stderr


def test_default_schedule_and_near_field_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without --engine the default schedule runs; evaluate takes the near-field geometry from the result."""
    scan, out = str(tmp_path / "n.cxi"), str(tmp_path / "n.h5")
    assert main(["simulate", scan, "--near-field", "--probe-size", "32", "--positions", "25", "--overlap", "0.6"]) == 0
    assert main(["reconstruct", scan, "-o", out, "--schedule", "rpie:4,bh-cg:6", "--json", "--quiet"]) == 0
    rec = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert rec["schedule"] == "rpie:4,bh-cg:6" and rec["iterations"] == 10
    assert main(["evaluate", out, "--truth", scan, "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["propagation"] == "near"
    assert ev["amplitude_residual"] == pytest.approx(rec["final_loss"], rel=0.3)
