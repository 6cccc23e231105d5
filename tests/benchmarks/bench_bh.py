"""Benchmark (issue 5): wall time to a fixed data-error level, BH engines vs first-order ones.

Run by hand (not in CI); prints Markdown tables::

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python tests/benchmarks/bench_bh.py [--budget 40] [--repeats 3] [--ptychi]
        [--scans far near far-60dB near-60dB near-known-probe petra star] [--engines bh-cg rpie ...]

Scans (64 px frames, Poisson noise, seed 1):

* far: 200 Fermat positions (sub-pixel), 70% overlap, 1e6 photons per frame (SNR 35 dB);
* near: 100 positions, 1e6 photons (SNR 28 dB), positions rounded to whole pixels: pty-chi
  shifts the probe, not the object, by the sub-pixel part, which for our wide near-field beam
  misfits the data at the truth by 5.5 L*; with whole pixels both models agree to 1e-13;
* far-60dB, near-60dB: the same scans with the photon count that gives an SNR
  10 log10(sum I^2 / sum I) of 60 dB, the regime of seed 002's synthetic test;
* near-known-probe: "near" with the probe known from a previous scan (here the true probe,
  still refined), as at beamlines where the illumination is characterised once;
* petra (measured): PETRA III P25 near-field scan of ``../shared/data`` (200 frames of 100 px,
  Fresnel scaling with the 3.65 mm focus distance, 5 masked pixels), no probe guess in the file;
* star (measured): APS Siemens star of ``../shared/data`` (516 frames of 128 px, far field), with
  tike's zone-plate probe guess.

Measured scans have no truth: their L* is the lowest loss any engine reached in the run, and
every engine runs the whole budget.

Every engine starts from the same state (``initial_probe``, unit object), all options at their
defaults, and iterates (one epoch at a time) until it reaches the last level or ``--budget``
seconds. Levels are multiples of the truth's own normalised amplitude residual L* (the noise
floor): within 10% / 5% of how well the truth fits the data is converged; 10 L* and 2 L* show
the early, nonconvex phase. The time to a level is the engine's ``time_history`` at the first
epoch whose loss is at or below it (median over repeats); "> B" means not reached within the
budget. Speed-up = best first-order time / BH-CG time (a lower bound, budget / BH-CG time,
where no first-order engine reached the level). "rpie5+bh-cg" is 5 rPIE epochs, then BH-CG (BH
as the refinement stage). ``--ptychi`` adds pty-chi's LSQML (its per-pixel mean loss converted
to ours by N M^2 / sum I) and pty-chi's own BH-CG ("ptychi-bh-cg", the seed paper authors'
implementation, compared with ours as a peer, not as a first-order engine) through
``ptychi_runner.py``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from workers import layout  # noqa: E402
from workers.data import ScanData  # noqa: E402
from workers.engines.registry import make_engine  # noqa: E402
from workers.io import load_scan  # noqa: E402
from workers.metrics import data_metrics, model_intensities  # noqa: E402
from workers.probe_start import initial_probe  # noqa: E402
from workers.simulate import simulate  # noqa: E402
from workers.state import ReconState

LEVELS = (10.0, 2.0, 1.1, 1.05)
ENGINES = ("bh-cg", "bh-qn", "bh-gd", "rpie5+bh-cg", "epie", "rpie", "adam")
FIRST_ORDER = ("epie", "rpie", "adam", "lsqml")
PTYCHI = {"lsqml": "lsqml", "ptychi-bh-cg": "bh-cg"}  # row name -> ptychi_runner engine
PEER_PYTHON = "/work/venv-peers/bin/python"
SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
HIGH_SNR_DB = 60.0
PETRA_FOCUS_DISTANCE = 3.65e-3  # m, focus to sample (not in the file; see shared/data/README.md)
Run = tuple[np.ndarray, np.ndarray]  # (loss, time_s) per epoch


def whole_pixels(data: ScanData, seed: int) -> ScanData:
    """``data``'s object, probe and scan with the positions rounded to whole pixels, measured anew (Poisson)."""
    truth = dict(data.truth, positions=np.round(data.truth["positions"]))
    clean = np.concatenate([m for m, _ in model_intensities(data, truth["object"], truth["probe"], truth["positions"])])
    frames = np.random.default_rng(seed).poisson(layout.to_detector(clean, data.geometry.kind)).astype(np.float32)
    return ScanData(frames, truth["positions"].copy(), data.geometry, None, None, "<simulation>", truth)


def scans() -> dict[str, Callable[[], ScanData]]:
    """The benchmark scans by name, built on demand."""

    def far(photons: float) -> ScanData:
        return simulate(probe_size=64, n_positions=200, overlap=0.7, photons=photons, seed=1)

    def near(photons: float) -> ScanData:
        base = simulate(probe_size=64, n_positions=100, overlap=0.7, photons=photons, near_field=True, seed=1)
        return whole_pixels(base, seed=1)

    def known_probe(data: ScanData) -> ScanData:
        data.probe = data.truth["probe"].copy()
        return data

    return {
        "far": lambda: far(1e6),
        "near": lambda: near(1e6),
        "far-60dB": lambda: far(photons_for_snr(far, HIGH_SNR_DB)),
        "near-60dB": lambda: near(photons_for_snr(near, HIGH_SNR_DB)),
        "near-known-probe": lambda: known_probe(near(1e6)),
        "petra": lambda: load_scan(
            SHARED_DATA / "petra_p25_nearfield.cxi", near_field=True, focus_distance=PETRA_FOCUS_DISTANCE
        ),
        "star": lambda: load_scan(SHARED_DATA / "tike_siemens_star.npz.bz2"),
    }


def photons_for_snr(build: Callable[[float], ScanData], target_db: float) -> float:
    """Photons per frame giving ``build(photons)`` an SNR of ``target_db`` (the SNR grows as 10 log10 photons)."""
    return 1e6 * 10 ** ((target_db - snr_db(build(1e6))) / 10)


def snr_db(data: ScanData) -> float:
    """Signal-to-noise ratio of Poisson counts, 10 log10(sum I^2 / sum var I) with var I = I."""
    i = data.intensities.astype(np.float64)
    return float(10 * np.log10((i**2).sum() / i.sum()))


def times_to_levels(loss: np.ndarray, time_s: np.ndarray, levels: list[float]) -> list[float]:
    """Wall time at the first epoch at or below each level (inf where never)."""
    out = []
    for level in levels:
        hit = np.flatnonzero(loss <= level)
        out.append(float(time_s[hit[0]]) if hit.size else float("inf"))
    return out


def run_ours(name: str, data: ScanData, stop: float, budget: float) -> Run:
    """(loss, time_s) per epoch of engine ``name`` at default options, until loss <= ``stop`` or ``budget`` s.

    ``"rpie5+bh-cg"``: a two-stage schedule, 5 rPIE epochs then BH-CG on the same state (times add up).
    """
    state = ReconState.initial(initial_probe(data)[0])
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
    while not loss or (time_s[-1] < budget and loss[-1] > stop):
        loss += engine.iterate(1)
        time_s.append(offset + engine.time_history[-1])
    return np.asarray(loss), np.asarray(time_s)


def run_ptychi(engine: str, data: ScanData, budget: float, threads: int) -> Run:
    """pty-chi's ``engine`` through the peer runner: epochs sized from a short probe run to fit the budget.

    The object covers the scan with 8 px to spare (positions moved accordingly); a detector mask
    goes along as pty-chi's valid-pixel mask.
    """
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.npz"
        origin = 8 - np.floor(data.positions.min(0))
        extent = np.ceil((data.positions + origin).max(0)).astype(int) + data.frame_size + 8
        obj = np.ones(tuple(extent), np.complex64)
        geometry: dict[str, object] = {} if data.mask is None else {"mask": data.mask}
        if data.geometry.kind == "near":
            g = data.geometry
            geometry = {"wavelength": g.wavelength, "distance": g.distance, "pixel_size": g.pixel_size}
        np.savez(
            src,
            intensities=data.intensities,
            positions=data.positions + origin,
            probe=initial_probe(data)[0],
            object=obj,
            **geometry,
        )

        def run(epochs: int) -> dict[str, np.ndarray]:
            out = Path(tmp) / f"out{epochs}.npz"
            cmd = [PEER_PYTHON, str(Path(__file__).with_name("ptychi_runner.py")), str(src), "--engine", engine]
            cmd += ["--epochs", str(epochs), "--batch-size", "32", "--threads", str(threads), "--out", str(out)]
            subprocess.run(cmd, check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=os.environ.copy())
            return dict(np.load(out))

        first = run(3)
        epochs = max(3, int(budget / max(float(first["epoch_times"].mean()), 1e-3)))
        result = run(epochs)
    per_pixel_to_ours = data.n_frames * data.frame_size**2 / float(data.intensities.sum())
    return result["loss"] * per_pixel_to_ours, np.cumsum(result["epoch_times"])


def fmt(t: float, budget: float) -> str:
    return f"> {budget:.0f}" if not np.isfinite(t) else f"{t:.2f}"


def speedups(best: dict[str, list[float]], budget: float) -> list[str]:
    """BH-CG's speed-up over the best first-order engine at each level ("> x" where none reached it)."""
    out = []
    for i, k in enumerate(LEVELS):
        first = min(best[n][i] for n in FIRST_ORDER if n in best)
        bh = best["bh-cg"][i]
        if not np.isfinite(bh):
            shown = "BH-CG not reached"
        elif np.isfinite(first):
            shown = f"{first / bh:.1f}x"
        else:
            shown = f"> {budget / bh:.1f}x"
        out.append(f"{k:g} L*: {shown}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=40.0, help="seconds per engine and scan")
    parser.add_argument(
        "--repeats", type=int, default=1, help="runs per engine (one where the first reached no level); medians"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--ptychi", action="store_true", help="add pty-chi's LSQML and BH-CG")
    parser.add_argument("--scans", nargs="+", default=list(scans()), choices=list(scans()))
    parser.add_argument("--engines", nargs="+", default=list(ENGINES))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, "
        f"budget {args.budget:.0f} s, repeats {args.repeats}\n"
    )
    summary = {}
    builders = scans()
    for scan_name in args.scans:
        data = builders[scan_name]()
        measured = not data.truth
        floor = None
        if not measured:
            t = data.truth
            floor = data_metrics(data, t["object"], t["probe"], t["positions"])["amplitude_residual"]
        names = list(args.engines) + (list(PTYCHI) if args.ptychi else [])
        runs: dict[str, list[Run]] = {}
        for name in names:
            runs[name] = []
            while len(runs[name]) < args.repeats:
                if name in PTYCHI:
                    runs[name].append(run_ptychi(PTYCHI[name], data, args.budget, args.threads))
                else:
                    stop = -np.inf if floor is None else LEVELS[-1] * floor
                    runs[name].append(run_ours(name, data, stop, args.budget))
                if floor is not None and not (runs[name][0][0] <= LEVELS[0] * floor).any():
                    break
        if floor is None:
            floor = min(float(loss.min()) for r in runs.values() for loss, _ in r)
        levels = [k * floor for k in LEVELS]
        kind = "measured (L*: the lowest loss reached in this run)" if measured else f"SNR {snr_db(data):.0f} dB"
        print(
            f"### {scan_name}: {data.n_frames} frames of {data.frame_size} px, {kind}, L* = {floor:.3e}\n", flush=True
        )
        head = " | ".join(f"t to {k:g} L* (s)" for k in LEVELS)
        print(f"| engine | {head} | final loss / L* | epochs |")
        print("|---" * (len(LEVELS) + 3) + "|")
        best: dict[str, list[float]] = {}
        for name, done in runs.items():
            times = np.median(np.asarray([times_to_levels(loss, t, levels) for loss, t in done]), axis=0).tolist()
            best[name] = times
            cells = " | ".join(fmt(x, args.budget) for x in times)
            final = np.median([loss[-1] for loss, _ in done]) / floor
            print(f"| {name} | {cells} | {final:.3f} | {int(np.median([len(loss) for loss, _ in done]))} |", flush=True)
        if "bh-cg" in best and any(n in best for n in FIRST_ORDER):
            summary[scan_name] = speedups(best, args.budget)
            print("\nBH-CG speed-up over the best first-order engine: " + ", ".join(summary[scan_name]) + "\n")
    print(json.dumps(summary), file=sys.stderr)


if __name__ == "__main__":
    main()
