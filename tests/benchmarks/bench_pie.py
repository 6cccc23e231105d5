"""Benchmark: our ePIE / rPIE beside pty-chi's on one simulated far-field scan, same start, same threads.

Run by hand (not in CI), with the peer venv of PEERS.md::

    .venv/bin/python tests/benchmarks/bench_pie.py [--epochs 50] [--threads 2] [--batch-sizes 1 32]

For each engine and batch size, both codes start from the same object (ones) and probe guess
(``workers.probe_start.initial_probe``), run the same number of epochs with the same step weights, and
are scored with the same metrics (``workers.metrics``): median seconds per epoch, and cRMS and
amplitude residual after the last epoch. pty-chi runs in its own process (its own venv); ours
runs in a fresh process too, so neither inherits the other's warm caches or threads.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PEER_PYTHON = os.environ.get("PTYCHI_PYTHON", "/work/venv-peers/bin/python")
STEPS = {"epie": (1.0, 1.0), "rpie": (0.1, 1.0)}


def build_inputs(path: Path, probe_size: int, positions: int, seed: int) -> dict:
    """Simulate the scan and write the shared start (npz) and the truth; returns scan facts."""
    from workers.probe_start import initial_probe
    from workers.simulate import simulate
    from workers.state import ReconState

    data = simulate(probe_size=probe_size, n_positions=positions, overlap=0.7, photons=1e6, seed=seed)
    state = ReconState.initial(initial_probe(data)[0])
    state.append_positions(data.positions)
    start = state.to_numpy()
    np.savez(
        path,
        intensities=data.intensities,
        positions=start["positions"],
        probe=start["probe"],
        object=start["object"],
        origin=start["origin"],
        truth_object=data.truth["object"],
        truth_probe=data.truth["probe"],
        truth_positions=data.truth["positions"],
    )
    return {"frames": data.n_frames, "frame": probe_size, "object": list(start["object"].shape)}


def run_ours(inp: Path, engine: str, epochs: int, batch: int, threads: int, out: Path) -> None:
    """Our engine in this interpreter (called in a child process by ``main``)."""
    import torch

    from workers.data import Geometry
    from workers.engines.registry import make_engine
    from workers.state import ReconState

    torch.set_num_threads(threads)
    z = np.load(inp)
    state = ReconState.initial(z["probe"])
    state.origin = z["origin"]
    state.object = torch.from_numpy(z["object"].copy())
    a, b = STEPS[engine]
    eng = make_engine(engine, state, Geometry("far"), {"alpha": a, "beta": b, "batch_size": batch})
    scan_positions = z["positions"] - z["origin"]
    eng.add_frames(z["intensities"], scan_positions)
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        eng.iterate(1)
        times.append(time.perf_counter() - t0)
    np.savez(out, object=state.object.numpy(), probe=state.probe.numpy(), epoch_times=np.array(times))


def score(inp: Path, result: Path) -> dict:
    """cRMS against the truth and the amplitude residual on the data, for a result npz."""
    from workers.data import Geometry, ScanData
    from workers.metrics import data_metrics, truth_metrics

    z, r = np.load(inp), np.load(result)
    truth = {"object": z["truth_object"], "probe": z["truth_probe"], "positions": z["truth_positions"]}
    data = ScanData(z["intensities"], z["positions"], Geometry("far"))
    t = truth_metrics(r["object"], z["origin"], truth)
    d = data_metrics(data, r["object"], r["probe"], z["positions"])
    times = r["epoch_times"]
    return {
        "s_per_epoch": float(np.median(times[1:] if len(times) > 1 else times)),
        "crms": t["crms"],
        "residual": d["amplitude_residual"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--probe-size", type=int, default=128)
    parser.add_argument("--positions", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--ours", nargs=6, metavar=("IN", "ENGINE", "EPOCHS", "BATCH", "THREADS", "OUT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.ours:
        inp, engine, epochs, batch, threads, out = args.ours
        run_ours(Path(inp), engine, int(epochs), int(batch), int(threads), Path(out))
        return

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    with tempfile.TemporaryDirectory() as tmp:
        inp = Path(tmp) / "scan.npz"
        facts = build_inputs(inp, args.probe_size, args.positions, args.seed)
        print(f"scan: {facts}, epochs {args.epochs}, threads {args.threads}", flush=True)
        rows = []
        for batch in args.batch_sizes:
            for engine in STEPS:
                a, b = STEPS[engine]
                ours, peer = Path(tmp) / f"ours_{engine}_{batch}.npz", Path(tmp) / f"peer_{engine}_{batch}.npz"
                subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--ours",
                        str(inp),
                        engine,
                        str(args.epochs),
                        str(batch),
                        str(args.threads),
                        str(ours),
                    ],
                    check=True,
                    env=env,
                )
                subprocess.run(
                    [
                        PEER_PYTHON,
                        str(HERE / "ptychi_runner.py"),
                        str(inp),
                        "--engine",
                        engine,
                        "--epochs",
                        str(args.epochs),
                        "--batch-size",
                        str(batch),
                        "--threads",
                        str(args.threads),
                        "--alpha",
                        str(a),
                        "--beta",
                        str(b),
                        "--out",
                        str(peer),
                    ],
                    check=True,
                    env=env,
                    stdout=subprocess.DEVNULL,
                )
                so, sp = score(inp, ours), score(inp, peer)
                rows.append((engine, batch, so, sp))
                print(json.dumps({"engine": engine, "batch": batch, "ours": so, "ptychi": sp}), flush=True)
    print()
    print(
        "| engine | batch | ours s/epoch | pty-chi s/epoch | speed-up | ours cRMS | pty-chi cRMS "
        "| ours residual | pty-chi residual |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for engine, batch, so, sp in rows:
        print(
            f"| {engine} | {batch} | {so['s_per_epoch']:.3f} | {sp['s_per_epoch']:.3f} | "
            f"{sp['s_per_epoch'] / so['s_per_epoch']:.2f}x | {so['crms']:.4f} | {sp['crms']:.4f} | "
            f"{so['residual']:.5f} | {sp['residual']:.5f} |"
        )


if __name__ == "__main__":
    main()
