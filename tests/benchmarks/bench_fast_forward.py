"""Seed 003's fast-forward stage against the same engine without it (issue 14), run by hand (not in CI).

    OMP_NUM_THREADS=1 python -m tests.benchmarks.bench_fast_forward run [--epochs 300] [--weights FILE]
    python -m tests.benchmarks.bench_fast_forward report      # the table and the PNGs in tests/benchmarks/fast_forward/
    OMP_NUM_THREADS=1 python -m tests.benchmarks.bench_fast_forward steps   # the residual of O + t (O_jump - O)

Scans the network never saw: five simulations with other seeds (so other objects, noise and start probes) than
the training and held-out sets, one per probe kind (focused, structured, zone plate, KB, near field), and the
measured Siemens star (tike, far field) cut to the central 64 x 64 detector pixels (object pixels twice as large,
positions halved) and to the frames within 90 px of the scan's centre, so that a CPU runs it.

Baseline: ePIE (defaults) for ``--epochs`` epochs from the project's start probe. Fast-forward: the same start,
ePIE for 50 epochs, the ``fast-forward`` stage (``workers.transforms.fast_forward``: network, tiles and the guard's
two residuals), then a fresh ePIE engine on the same state (as the runtime's next stage) to ``--epochs`` epochs in
all. Wall time runs from the first epoch and counts epochs and the stage (network included); the Poisson NLL
(``workers.metrics``'s definition, on all frames) is measured every ``--every`` epochs with its time left out.
Reported: the time each run first reaches the baseline's final NLL (and its lowest NLL: ePIE's NLL is not
monotone) and their ratios; the final NLL, cRMS and FRC cut-off (``workers.metrics.truth_metrics``) of both runs;
the guard's decision and residuals.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tests.benchmarks.sheets import tile
from workers import images, physics
from workers.data import Geometry, ScanData
from workers.engines.base import Engine
from workers.engines.options import EngineName, EPIEOptions
from workers.engines.registry import make_engine
from workers.io import load_scan
from workers.metrics import truth_metrics
from workers.probe_start import initial_probe
from workers.schedule import FastForwardOptions
from workers.simulate import simulate
from workers.state import ReconState
from workers.transforms import fast_forward

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
OUT = Path(__file__).resolve().parent / "fast_forward"
WARMUP = 50
SIMS = {  # held-out simulations: seeds unused by the data sets (those draw seeds from np.random.default_rng([seed, i]))
    "sim-focused": {"probe_kind": "focused", "photons": 1e5, "overlap": 0.7, "seed": 90001},
    "sim-structured": {"probe_kind": "structured", "photons": 1e6, "overlap": 0.6, "seed": 90002},
    "sim-zoneplate": {"probe_kind": "zone-plate-25", "photons": 1e4, "overlap": 0.75, "seed": 90003},
    "sim-kb": {"probe_kind": "kb", "photons": 1e7, "overlap": 0.55, "seed": 90004},
    "sim-near": {"probe_kind": "near", "photons": 1e5, "overlap": 0.65, "seed": 90005, "near_field": True},
}


def scan(name: str) -> ScanData:
    """A benchmark scan by name (module docstring)."""
    if name in SIMS:
        return simulate(probe_size=48, n_positions=144, scan="fermat", **SIMS[name])  # type: ignore[arg-type]
    data = load_scan(DATA / "tike_siemens_star.npz.bz2")
    m = data.frame_size
    lo = (m - 64) // 2
    centre = np.median(data.positions, axis=0)
    keep = np.abs(data.positions - centre).max(1) < 90
    g = data.geometry
    geometry = Geometry(g.kind, g.wavelength, g.distance, g.pixel_size * m / 64, g.focus_distance)
    frames = data.intensities[keep][:, lo : lo + 64, lo : lo + 64]
    return ScanData(frames, data.positions[keep] * 64 / m, geometry, source="siemens star, central 64 px, |r| < 90 px")


@torch.no_grad()
def poisson_nll(engine: Engine, batch: int = 64) -> float:
    """mean over valid pixels of I_m - I + I log(I / I_m) (``workers.metrics.data_metrics``), on all frames."""
    state, total, count = engine.state, 0.0, 0
    for start in range(0, engine.n_frames, batch):
        index = torch.arange(start, min(start + batch, engine.n_frames))
        corner, frac = engine.split(index)
        patches = physics.patches(state.object, corner, frac, engine.size, physics.SUBPIXEL_PAD)
        model = physics.intensity(engine.propagator.forward(physics.exit_waves(state.probe, patches)))
        model = model.to(torch.float64).clamp_min(1e-12)
        measured = engine.amplitudes[index].to(torch.float64).square()
        terms = model - measured + torch.where(measured > 0, measured * torch.log(measured.clamp_min(1e-12) / model), 0)
        if engine.mask is not None:
            terms = terms[:, engine.mask > 0]
        total += float(terms.sum())
        count += terms.numel()
    return total / count


def run(data: ScanData, probe: np.ndarray, epochs: int, every: int, jump: FastForwardOptions | None) -> dict[str, Any]:
    """One run (module docstring): its NLL trajectory, the guard's record and the final state."""
    state = ReconState.initial(probe)
    engine = make_engine(EngineName.EPIE, state, data.geometry, EPIEOptions(), mask=data.mask, seed=0)
    engine.add_frames(data.intensities, data.positions)
    clock, rows, record = 0.0, [], None
    rows.append({"epoch": 0, "time_s": 0.0, "nll": poisson_nll(engine)})
    for epoch in range(1, epochs + 1):
        if jump is not None and epoch == WARMUP + 1:
            started = time.perf_counter()
            record = json.loads(fast_forward(state, engine, jump)["fast_forward"])
            following = make_engine(EngineName.EPIE, state, data.geometry, EPIEOptions(), mask=data.mask, seed=1)
            following.adopt_frames(engine)
            engine = following
            clock += time.perf_counter() - started
            rows.append({"epoch": WARMUP, "time_s": clock, "nll": poisson_nll(engine), "jump": True})
        started = time.perf_counter()
        engine.iterate(1)
        clock += time.perf_counter() - started
        if epoch % every == 0 or epoch == epochs:
            rows.append({"epoch": epoch, "time_s": clock, "nll": poisson_nll(engine)})
    return {"rows": rows, "record": record, "state": state.to_numpy()}


def reached(rows: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    """The first measurement at or below ``target``."""
    return next((r for r in rows if r["nll"] <= target), None)


def quality(data: ScanData, state: dict[str, np.ndarray]) -> dict[str, float]:
    """cRMS and FRC cut-off against the truth (simulations), else nothing."""
    if not data.truth:
        return {}
    m = truth_metrics(state["object"], state["origin"], data.truth)
    return {"crms": m["crms"], "frc_cutoff": m["frc_cutoff"]}


def cmd_run(args: argparse.Namespace) -> None:
    args.cache.mkdir(parents=True, exist_ok=True)
    names = args.only.split(",") if args.only else [*SIMS, "star"]
    for name in names:
        if (args.cache / f"{name}.json").is_file():
            print(f"{name}: cached", flush=True)
            continue
        data = scan(name)
        probe, _ = initial_probe(data, 1, None, seed=0)
        base = run(data, probe, args.epochs, args.every, None)
        target = base["rows"][-1]["nll"]
        best = min(r["nll"] for r in base["rows"])
        options = FastForwardOptions(weights=args.weights)
        ff = run(data, probe, args.epochs, args.every, options)
        row = {
            "name": name,
            "frames": data.n_frames,
            "object": list(base["state"]["object"].shape),
            "epochs": args.epochs,
            "target_nll": target,
            "best_nll": best,
            "baseline": {
                "reach": reached(base["rows"], target),
                "reach_best": reached(base["rows"], best),
                "final_nll": target,
                **quality(data, base["state"]),
            },
            "fast_forward": {
                "reach": reached(ff["rows"], target),
                "reach_best": reached(ff["rows"], best),
                "final_nll": ff["rows"][-1]["nll"],
                "record": ff["record"],
                **quality(data, ff["state"]),
            },
            "trajectories": {"baseline": base["rows"], "fast_forward": ff["rows"]},
        }
        (args.cache / f"{name}.json").write_text(json.dumps(row))
        np.savez(
            args.cache / f"{name}.npz",
            **{
                f"{k}_{key}": v[key]
                for k, v in (("baseline", base["state"]), ("ff", ff["state"]))
                for key in ("object", "probe", "positions")
            },
        )
        print(json.dumps({k: v for k, v in row.items() if k != "trajectories"}), flush=True)


def cmd_steps(args: argparse.Namespace) -> None:
    """After the warm-up, the data residual of O + t (O_jump - O) for a few t (t = 1 is the stage's jump): does a
    shorter step in the network's direction lower the residual where the whole jump raises it?"""
    from models.unet import apply_tiled, load_fast_forward
    from workers import ff_state

    steps = (0.0, 0.25, 0.5, 1.0)
    print("scan           | " + " | ".join(f"t = {t:<8g}" for t in steps))
    for name in [*SIMS, "star"]:
        data = scan(name)
        probe, _ = initial_probe(data, 1, None, seed=0)
        state = ReconState.initial(probe)
        engine = make_engine(EngineName.EPIE, state, data.geometry, EPIEOptions(), mask=data.mask, seed=0)
        engine.add_frames(data.intensities, data.positions)
        engine.iterate(WARMUP)
        net = load_fast_forward(args.weights)
        obj = state.object
        x, c = ff_state.features(obj, ff_state.illumination(state))
        jump = ff_state.jumped(obj, x, c, apply_tiled(net, x, net.multiple)) - obj
        residuals = [ff_state.data_residual(engine, obj + t * jump) for t in steps]
        print(f"{name:<14} | " + " | ".join(f"{r:<12.6g}" for r in residuals), flush=True)


def cmd_report(args: argparse.Namespace) -> None:
    header = [
        "scan",
        "frames",
        "target NLL",
        "base t (s) [epoch]",
        "FF t (s) [epoch]",
        "speed-up",
        "to best NLL base/FF (s)",
        "final NLL base/FF",
        "guard",
        "resid. before/after",
        "cRMS base/FF",
        "FRC base/FF",
    ]
    lines = []
    for name in [*SIMS, "star"]:
        path = args.cache / f"{name}.json"
        if not path.is_file():
            continue
        row = json.loads(path.read_text())
        b, f = row["baseline"], row["fast_forward"]
        tb = b["reach"]["time_s"]
        tf = f["reach"]["time_s"] if f["reach"] else math.nan
        rec = f["record"]
        guard = "accepted" if rec["accepted"] else "rejected"
        tb_best = b["reach_best"]["time_s"]
        tf_best = f["reach_best"]["time_s"] if f["reach_best"] else math.nan
        crms = f"{b['crms']:.4f} / {f['crms']:.4f}" if "crms" in b else "-"
        frc = f"{b['frc_cutoff']:.3f} / {f['frc_cutoff']:.3f}" if "frc_cutoff" in b else "-"
        lines.append(
            [
                name,
                str(row["frames"]),
                f"{row['target_nll']:.4g}",
                f"{tb:.1f} [{b['reach']['epoch']}]",
                f"{tf:.1f} [{f['reach']['epoch']}]" if f["reach"] else "not reached",
                f"{tb / tf:.2f}x" if f["reach"] else "-",
                f"{tb_best:.1f} / " + (f"{tf_best:.1f}" if f["reach_best"] else "not reached"),
                f"{b['final_nll']:.4g} / {f['final_nll']:.4g}",
                guard,
                f"{rec['residual_before']:.4g} / {rec['residual_after']:.4g}",
                crms,
                frc,
            ]
        )
    widths = [max(len(h), *(len(r[i]) for r in lines)) for i, h in enumerate(header)]
    print(" | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    print("-|-".join("-" * w for w in widths))
    for r in lines:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    pictures(args.cache)


def pictures(cache: Path) -> None:
    """Amplitude and phase of the baseline's final state and the fast-forward state at the target, per scan."""
    OUT.mkdir(parents=True, exist_ok=True)
    for name in ["star", "sim-focused", "sim-zoneplate"]:
        path = cache / f"{name}.npz"
        if not path.is_file():
            continue
        saved = np.load(path)
        rows = []
        for label, key in (("ePIE baseline, final", "baseline"), ("fast-forward, final", "ff")):
            obj, probe, positions = saved[f"{key}_object"], saved[f"{key}_probe"], saved[f"{key}_positions"]
            region = images.illuminated_region(probe, positions, obj.shape)
            rows.append(
                [(f"{label}: {k}", images.png(k, images.view(k, obj, probe), region)) for k in ("amplitude", "phase")]
            )
        tile(rows, OUT / f"{name}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/bench_fast_forward"))
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--epochs", type=int, default=300)
    r.add_argument("--every", type=int, default=2, help="epochs between NLL measurements")
    r.add_argument("--weights", help="fast-forward weights (default: the shipped ones)")
    r.add_argument("--only", help="comma-separated scan names")
    r.set_defaults(func=cmd_run)
    sub.add_parser("report").set_defaults(func=cmd_report)
    st = sub.add_parser("steps")
    st.add_argument("--weights", help="fast-forward weights (default: the shipped ones)")
    st.set_defaults(func=cmd_steps)
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.func(args)


if __name__ == "__main__":
    main()
