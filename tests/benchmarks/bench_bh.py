"""Benchmark (issue 5): wall time to a fixed data-error level, BH engines vs first-order ones.

Run by hand (not in CI); prints a Markdown table::

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python tests/benchmarks/bench_bh.py [--budget 30] [--repeats 1] [--ptychi]

Scans: far field (64 px frames, 200 Fermat positions, 70% overlap) and near field (64 px,
100 positions), both 1e6 photons per frame (Poisson). Every engine starts from the same state
(``probe_guess``, unit object), all options at their defaults, and iterates (one epoch at a
time) until it reaches the last level or ``--budget`` seconds. Levels are multiples of the
truth's own normalised amplitude residual L* (the noise floor): a reconstruction that fits
the data as well as the truth does is converged. The time to a level is the engine's
``time_history`` at the first epoch whose loss is at or below it (median over repeats);
"> B" means not reached within the budget. Speed-up = best first-order time / BH-CG time
(a lower bound, budget / BH-CG time, where no first-order engine reached the level).
"rpie5+bh-cg" is the schedule 5 rPIE epochs, then BH-CG (BH as the refinement stage).
``--ptychi`` adds pty-chi's LSQML (far field only; its per-pixel mean loss is converted to ours
by N M^2 / sum I) through ``ptychi_runner.py`` in the peer venv.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from workers.data import ReconState, ScanData, probe_guess  # noqa: E402
from workers.engines.registry import make_engine  # noqa: E402
from workers.metrics import data_metrics  # noqa: E402
from workers.simulate import simulate  # noqa: E402

LEVELS = (2.0, 1.5, 1.1)
ENGINES = ("bh-cg", "bh-qn", "bh-gd", "rpie5+bh-cg", "epie", "rpie", "adam")
FIRST_ORDER = ("epie", "rpie", "adam", "lsqml")
PEER_PYTHON = "/work/venv-peers/bin/python"


def scans() -> dict[str, ScanData]:
    return {
        "far field": simulate(probe_size=64, n_positions=200, overlap=0.7, photons=1e6, seed=1),
        "near field": simulate(probe_size=64, n_positions=100, overlap=0.7, photons=1e6, near_field=True, seed=1),
    }


def times_to_levels(loss: np.ndarray, time_s: np.ndarray, levels: list[float]) -> list[float]:
    """Wall time at the first epoch at or below each level (inf where never)."""
    out = []
    for level in levels:
        hit = np.flatnonzero(loss <= level)
        out.append(float(time_s[hit[0]]) if hit.size else float("inf"))
    return out


def run_ours(name: str, data: ScanData, levels: list[float], budget: float) -> tuple[list[float], float, int]:
    """(times to levels, final loss, epochs) for engine ``name`` at default options.

    ``"rpie5+bh-cg"``: a two-stage schedule, 5 rPIE epochs then BH-CG on the same state (times add up).
    """
    state = ReconState.initial(probe_guess(data))
    warm, name = name.split("+") if "+" in name else ("", name)
    loss: list[float] = []
    time_s: list[float] = []
    previous = None
    if warm:
        previous = make_engine("rpie", state, data.geometry, {}, mask=data.mask)
        previous.add_frames(data.intensities, data.positions)
        loss += previous.iterate(int(warm.removeprefix("rpie")))
        time_s += previous.time_history
    engine = make_engine(name, state, data.geometry, {}, mask=data.mask)
    if previous is None:
        engine.add_frames(data.intensities, data.positions)
    else:
        engine.adopt_frames(previous)
    offset = time_s[-1] if time_s else 0.0
    while not loss or (time_s[-1] < budget and loss[-1] > levels[-1]):
        loss += engine.iterate(1)
        time_s.append(offset + engine.time_history[-1])
    return times_to_levels(np.asarray(loss), np.asarray(time_s), levels), float(loss[-1]), len(loss)


def run_lsqml(data: ScanData, levels: list[float], budget: float, threads: int) -> tuple[list[float], float, int]:
    """pty-chi LSQML through the peer runner: epochs sized from a short probe run to fit the budget."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.npz"
        obj = np.ones((data.truth["object"].shape[0] + 16, data.truth["object"].shape[1] + 16), np.complex64)
        np.savez(src, intensities=data.intensities, positions=data.positions + 8, probe=probe_guess(data), object=obj)

        def run(epochs: int) -> dict[str, np.ndarray]:
            out = Path(tmp) / f"out{epochs}.npz"
            cmd = [PEER_PYTHON, str(Path(__file__).with_name("ptychi_runner.py")), str(src), "--engine", "lsqml"]
            cmd += ["--epochs", str(epochs), "--batch-size", "32", "--threads", str(threads), "--out", str(out)]
            subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=os.environ.copy())
            return dict(np.load(out))

        first = run(3)
        epochs = max(3, int(budget / max(float(first["epoch_times"].mean()), 1e-3)))
        result = run(epochs)
    per_pixel_to_ours = data.n_frames * data.frame_size**2 / float(data.intensities.sum())
    loss = result["loss"] * per_pixel_to_ours
    time_s = np.cumsum(result["epoch_times"])
    return times_to_levels(loss, time_s, levels), float(loss[-1]), len(loss)


def fmt(t: float, budget: float) -> str:
    return f"> {budget:.0f}" if not np.isfinite(t) else f"{t:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=30.0, help="seconds per engine and scan")
    parser.add_argument("--repeats", type=int, default=1, help="runs per engine; times are medians")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ptychi", action="store_true", help="add pty-chi LSQML (far field)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, "
        f"budget {args.budget:.0f} s, repeats {args.repeats}\n"
    )
    summary = {}
    for scan_name, data in scans().items():
        t = data.truth
        floor = data_metrics(data, t["object"], t["probe"], t["positions"])["amplitude_residual"]
        levels = [k * floor for k in LEVELS]
        print(f"### {scan_name}: {data.n_frames} frames of {data.frame_size} px, L* = {floor:.3e}\n")
        head = " | ".join(f"t to {k:g} L* (s)" for k in LEVELS)
        print(f"| engine | {head} | final loss / L* | epochs |")
        print("|---" * (len(LEVELS) + 3) + "|")
        best: dict[str, list[float]] = {}
        names = list(ENGINES) + (["lsqml"] if args.ptychi and data.geometry.kind == "far" else [])
        for name in names:
            runs = []
            for _ in range(args.repeats):
                if name == "lsqml":
                    runs.append(run_lsqml(data, levels, args.budget, args.threads))
                else:
                    runs.append(run_ours(name, data, levels, args.budget))
            times = np.median(np.asarray([r[0] for r in runs]), axis=0).tolist()
            best[name] = times
            cells = " | ".join(fmt(x, args.budget) for x in times)
            print(f"| {name} | {cells} | {np.median([r[1] for r in runs]) / floor:.3f} | {runs[0][2]} |", flush=True)
        ratios = []
        for i, k in enumerate(LEVELS):
            first = min(best[n][i] for n in FIRST_ORDER if n in best)
            bh = best["bh-cg"][i]
            ratio = first / bh if np.isfinite(first) else float("inf")
            bound = "> " if not np.isfinite(first) else ""
            shown = f"{bound}{(args.budget / bh if not np.isfinite(first) else ratio):.1f}x"
            ratios.append(f"{k:g} L*: {shown}")
        summary[scan_name] = ratios
        print("\nBH-CG speed-up over the best first-order engine: " + ", ".join(ratios) + "\n")
    print(json.dumps(summary), file=sys.stderr)


if __name__ == "__main__":
    main()
