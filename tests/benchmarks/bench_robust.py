"""Robustness benchmark (issue 11e): PIE engines over many epochs on measured scans, every engine
from a probe guess stored in the file, and PNG renders of a reconstruction.

    python tests/benchmarks/bench_robust.py pie star rpie 300 [--unconstrained] [--save OUT.npz]
    python tests/benchmarks/bench_robust.py pie petra epie 100
    python tests/benchmarks/bench_robust.py guess star 10          # every engine, the file's probe guess
    python tests/benchmarks/bench_robust.py guess sim 20           # a simulated scan, its true probe as the guess
    python tests/benchmarks/bench_robust.py render OUT.npz|OUT.h5 OUT.png

``--unconstrained`` turns the probe power constraint off (the engines before the fix). Each
command prints one JSON line per run. Single-threaded (shared machines).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from workers.data import ScanData
from workers.engines.base import Engine
from workers.engines.options import EngineName
from workers.engines.registry import make_engine
from workers.io import load_scan, read_result
from workers.probe_start import initial_probe
from workers.simulate import simulate
from workers.state import ReconState

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def scan(name: str) -> ScanData:
    """``star`` (far field, probe guess in the file), ``petra`` (cone-beam near field) or ``sim``."""
    if name == "star":
        return load_scan(DATA / "tike_siemens_star.npz.bz2")
    if name == "petra":
        return load_scan(DATA / "petra_p25_nearfield.cxi", near_field=True, focus_distance=3.65e-3)
    data = simulate(probe_size=64, n_positions=100, photons=1e5, seed=3)
    return replace(data, probe=data.truth["probe"])


def run(data: ScanData, engine_name: str, epochs: int, *, unconstrained: bool = False) -> tuple[Engine, float]:
    """``epochs`` of ``engine_name`` at its defaults from the start probe; returns the engine and the wall time."""
    if unconstrained:
        Engine.constrain_probe_power = lambda self: None  # type: ignore[method-assign]
    state = ReconState.initial(initial_probe(data)[0])
    engine = make_engine(engine_name, state, data.geometry, {}, mask=data.mask, seed=0)
    engine.add_frames(data.intensities, data.positions)
    t0 = time.perf_counter()
    engine.iterate(epochs)
    return engine, time.perf_counter() - t0


def summary(losses: np.ndarray) -> dict[str, float | int | bool]:
    best = int(np.nanargmin(losses)) if np.isfinite(losses).any() else -1
    return {
        "first": float(losses[0]),
        "lowest": float(losses[best]),
        "lowest_epoch": best + 1,
        "final": float(losses[-1]),
        "final_over_lowest": float(losses[-1] / losses[best]),
        "finite": bool(np.isfinite(losses).all()),
    }


def cmd_pie(args: argparse.Namespace) -> None:
    engine, wall = run(scan(args.data), args.engine, args.epochs, unconstrained=args.unconstrained)
    snap = engine.snapshot()
    out = {"data": args.data, "engine": args.engine, "epochs": args.epochs, "unconstrained": args.unconstrained}
    out |= summary(snap["loss"]) | {"probe_power": float((np.abs(snap["probe"]) ** 2).sum()), "wall_s": wall}
    print(json.dumps(out), flush=True)
    if args.save:
        np.savez(args.save, object=snap["object"], probe=snap["probe"], loss=snap["loss"])


def cmd_guess(args: argparse.Namespace) -> None:
    data = scan(args.data)
    assert data.probe is not None, "the scan must carry a probe guess"
    for name in EngineName:
        engine, wall = run(data, name.value, args.epochs)
        snap = engine.snapshot()
        finite = all(np.isfinite(snap[k]).all() for k in ("object", "probe", "loss"))
        row = {"data": args.data, "engine": name.value, "epochs": args.epochs, "state_finite": finite}
        print(json.dumps(row | summary(snap["loss"]) | {"wall_s": wall}), flush=True)


def cmd_render(args: argparse.Namespace) -> None:
    from PIL import Image

    src = Path(args.result)
    obj = np.load(src)["object"] if src.suffix == ".npz" else read_result(src)["object"]
    amp, phase = np.abs(obj), np.angle(obj)
    lo, hi = np.percentile(amp, [1, 99])
    a8 = (np.clip((amp - lo) / max(hi - lo, 1e-12), 0, 1) * 255).astype(np.uint8)
    p8 = ((phase + np.pi) / (2 * np.pi) * 255).astype(np.uint8)
    gap = np.full((obj.shape[0], 8), 255, dtype=np.uint8)
    Image.fromarray(np.concatenate([a8, gap, p8], 1)).save(args.png)
    print(json.dumps({"png": args.png, "amplitude_1_99": [float(lo), float(hi)]}))


def main(argv: list[str] | None = None) -> None:
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pie")
    p.add_argument("data", choices=["star", "petra", "sim"])
    p.add_argument("engine", choices=["epie", "rpie"])
    p.add_argument("epochs", type=int)
    p.add_argument("--unconstrained", action="store_true")
    p.add_argument("--save")
    p.set_defaults(func=cmd_pie)
    g = sub.add_parser("guess")
    g.add_argument("data", choices=["star", "sim"])
    g.add_argument("epochs", type=int)
    g.set_defaults(func=cmd_guess)
    r = sub.add_parser("render")
    r.add_argument("result")
    r.add_argument("png")
    r.set_defaults(func=cmd_render)
    args = parser.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main(sys.argv[1:])
