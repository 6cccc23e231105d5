"""Benchmark (issue 16): joint ptychography + fluorescence (seed 004) against the separate inversions.

Run by hand (not in CI); prints Markdown tables and writes curves and PNGs to tests/benchmarks/xrf/::

    OMP_NUM_THREADS=1 .venv/bin/python -m tests.benchmarks.bench_xrf [--iterations 100]
        [--only main,probe,three,bh,alpha,link,frc,floor,objects]

Scans as in the seed scaled to a 2-core CPU: 64 px frames, a focused probe (beam 26 px),
raster scans at 83% (10 x 10), 53% (8 x 8) and 20% (6 x 6) overlap (objects 116, 157 and 176 px),
element maps at full resolution with features down to 1-3 px, the seed's weak-object objects
(``--xrf-link linear``: O = 1 - 1/2 sum mu w + i phase) for the seed's comparisons; noise as in the
seed: d = eta Poisson(d^ / eta), noise level sqrt(eta / mean d^) = 3% (or 0) on frames and counts.

Methods, same optimiser (joint-xrf's Adam, lr 0.1, one batch of all frames per iteration, 100
iterations as in the seed): joint (the link, alpha by GradNorm) and separate (``link="none"``: the
object fitted by ptychography alone, the maps by fluorescence deconvolution alone, with the same
probe). Fixed true probe, or the probe refined from ``initial_probe`` (the project's default start).

Errors over the lit region (summed probe intensity > 10% of its peak): object MSE after the best complex scalar
(ptychography cannot see the global phase, nor the scale when the probe is refined), and the seed's own object MSE,
(1/n^2) ||z - z*||^2 with nothing removed (sec. 4: the link fixes the phase and absorption reference to vacuum,
which ptychography alone leaves free); element-map error = mean over elements of ||w - w*||^2 / ||w*||^2. FRC of the
maps against the truth (``workers.metrics.masked_frc``) against the probe's own cut-off: the frequency where the
radial average of |FT(|P|^2)| (the fluorescence transfer function) falls below 10% of its value at 0.

Objects (``objects``): the main comparison at 3% noise on three further random objects (simulation seeds 2-4),
Adam at every overlap and BH-CG at 83%.

Floor (``floor``): at 83% overlap with the true probe, where ptychography alone is well posed, joint and
separate run on (Adam 300 iterations, BH-CG 200) to give the iterations each needs to reach each object-MSE
level and the lowest MSE each reaches.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from workers import layout, physics
from workers.data import ScanData
from workers.engines.joint_xrf import JointXRF
from workers.engines.registry import make_engine
from workers.images import illuminated_region, png
from workers.metrics import masked_frc
from workers.probe_start import initial_probe
from workers.simulate import simulate
from workers.state import ReconState
from workers.xrf_metrics import frc_crossing, probe_cutoff

OUT = Path(__file__).parent / "xrf"
OVERLAPS = {0.83: 100, 0.53: 64, 0.2: 36}
EVERY = 5
IMAGE_CASES = (
    "fe_ov83_noise0",
    "fe_ov53_noise3",
    "fe_ov20_noise3",
    "fe_ov53_noise3_probe",
    "feznca_ov53_noise0",
    "fe_ov53_noise3_bhcg",
    "fe_ov83_noise0_bhcg",
    "link_phase2.5",
)
"""Cases whose image sheets are saved (curves are saved for every case)."""


@dataclass
class Run:
    """One reconstruction's curves (every ``EVERY`` iterations) and final maps."""

    label: str
    iterations: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    fluorescence_loss: list[float] = field(default_factory=list)
    object_mse: list[float] = field(default_factory=list)
    object_mse_raw: list[float] = field(default_factory=list)
    map_error: list[float] = field(default_factory=list)
    seconds: float = 0.0
    alpha: float = 0.0
    final: dict[str, np.ndarray] = field(default_factory=dict)


def noisy(scan: ScanData, level: float, seed: int) -> ScanData:
    """The seed's noise: d = eta Poisson(d^ / eta), eta = level^2 mean(d^), on the frames and on the counts."""
    if level == 0:
        return scan
    rng = np.random.default_rng(seed)

    def apply(x: np.ndarray) -> np.ndarray:
        eta = level**2 * float(x.mean())
        return (eta * rng.poisson(x / eta)).astype(np.float32)

    assert scan.fluorescence is not None
    flu = replace(scan.fluorescence, counts=apply(scan.fluorescence.counts))
    return replace(scan, intensities=apply(scan.intensities), fluorescence=flu)


def strong_phase(scan: ScanData, scale: float) -> ScanData:
    """The same scan with the truth's phase multiplied by ``scale`` (frames re-simulated, noise-free)."""
    obj = scan.truth["object"]
    obj = (np.abs(obj) * np.exp(1j * scale * np.angle(obj))).astype(np.complex64)
    corner, frac = physics.split_positions(torch.from_numpy(scan.truth["positions"]))
    patches = physics.patches(torch.from_numpy(obj), corner, frac, scan.frame_size, physics.SUBPIXEL_PAD)
    far = physics.FarField().forward(physics.exit_waves(torch.from_numpy(scan.truth["probe"][0])[None], patches))
    frames = layout.to_detector(physics.intensity(far).numpy(), "far").astype(np.float32)
    return replace(scan, intensities=frames, truth=scan.truth | {"object": obj})


def errors(snap: dict[str, np.ndarray], scan: ScanData, lit: np.ndarray) -> tuple[float, float, float]:
    """(object MSE after the best complex scalar, the seed's object MSE with nothing removed, mean
    relative element-map error) over ``lit``."""
    r, c = snap["origin"].astype(int)
    truth = scan.truth["object"]
    h, w = truth.shape
    raw = snap["object"][r : r + h, c : c + w][lit]
    obj = raw * np.vdot(raw, truth[lit]) / max(np.vdot(raw, raw).real, 1e-30)
    assert scan.fluorescence is not None
    maps = []
    for e in scan.fluorescence.elements:
        est, ref = snap[f"elements/{e}"][r : r + h, c : c + w][lit], scan.truth[f"elements/{e}"][lit]
        maps.append(float(np.sum((est - ref) ** 2) / np.sum(ref**2)))
    mse = float(np.mean(np.abs(obj - truth[lit]) ** 2))
    return mse, float(np.mean(np.abs(raw - truth[lit]) ** 2)), float(np.mean(maps))


def reconstruct(scan: ScanData, label: str, iterations: int, refine_probe: bool, **options: object) -> Run:
    probe = initial_probe(scan)[0] if refine_probe else scan.truth["probe"]
    state = ReconState.initial(probe)
    opts = {"update_probe": refine_probe, "batch_size": scan.n_frames, **options}
    engine = make_engine("joint-xrf", state, scan.geometry, opts)
    assert isinstance(engine, JointXRF)
    engine.add_frames(scan.intensities, scan.positions, scan.fluorescence)
    lit = illuminated_region(scan.truth["probe"], scan.truth["positions"], scan.truth["object"].shape)
    run = Run(label)
    for k in range(0, iterations, EVERY):
        engine.iterate(min(EVERY, iterations - k))
        o, raw, m = errors(engine.snapshot(), scan, lit)
        run.iterations.append(engine.epoch)
        run.object_mse.append(o)
        run.object_mse_raw.append(raw)
        run.map_error.append(m)
    run.loss, run.fluorescence_loss = list(engine.loss_history), list(engine.fluorescence_history)
    run.seconds, run.alpha = engine.time_history[-1], float(engine.alpha or 0)
    run.final = engine.snapshot()
    return run


def scan_for(overlap: float, elements: tuple[str, ...], link: str = "linear", seed: int = 1) -> ScanData:
    return simulate(
        probe_size=64,
        n_positions=OVERLAPS[overlap],
        overlap=overlap,
        photons=float("inf"),
        scan="raster",
        xrf=elements,
        link=link,  # type: ignore[arg-type]
        seed=seed,
    )


def plot(name: str, runs: list[Run]) -> None:
    """Loss and error vs iteration (log-log), one PNG per case, as the seed's figures 9-11."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 5, figsize=(21, 3.6))
    for run in runs:
        ax[0].loglog(np.arange(1, len(run.loss) + 1), run.loss, label=run.label)
        ax[1].loglog(np.arange(1, len(run.fluorescence_loss) + 1), run.fluorescence_loss, label=run.label)
        ax[2].loglog(run.iterations, run.object_mse, label=run.label)
        ax[3].loglog(run.iterations, run.object_mse_raw, label=run.label)
        ax[4].loglog(run.iterations, run.map_error, label=run.label)
    titles = ("ptychography loss", "fluorescence loss", "object MSE", "seed's object MSE", "element-map rel. error")
    for a, t in zip(ax, titles, strict=True):
        a.set_title(t)
        a.set_xlabel("iteration")
        a.legend(fontsize=8)
    fig.suptitle(name)
    fig.tight_layout()
    fig.savefig(OUT / f"{name}_curves.png", dpi=80)
    plt.close(fig)


def save_images(name: str, scan: ScanData, runs: list[Run]) -> None:
    """Amplitude, phase and first element map (columns) of the truth and every run (rows), one PNG:
    bare images (windowed over the lit region, outside dimmed), each row labelled; ``IMAGE_CASES`` only."""
    from PIL import Image, ImageDraw

    if name not in IMAGE_CASES:
        return

    truth = scan.truth
    h, w = truth["object"].shape
    lit = illuminated_region(truth["probe"], truth["positions"], (h, w))
    first = scan.fluorescence.elements[0]  # type: ignore[union-attr]
    rows = [("truth", truth["object"], truth[f"elements/{first}"])]
    for run in runs:
        r, c = run.final["origin"].astype(int)
        rows.append(
            (run.label, run.final["object"][r : r + h, c : c + w], run.final[f"elements/{first}"][r : r + h, c : c + w])
        )
    label = 18
    sheet = Image.new("RGB", (3 * w + 8, len(rows) * (h + label)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (text, obj, element) in enumerate(rows):
        top = i * (h + label)
        draw.text((4, top + 3), f"{text}: amplitude | phase | {first}", fill="black")
        views = [("amplitude", np.abs(obj)), ("phase", np.angle(obj)), (f"elements/{first}", element)]
        for j, (kind, values) in enumerate(views):
            sheet.paste(Image.open(io.BytesIO(png(kind, values, lit, annotate=False))), (j * (w + 4), top + label))
    sheet.quantize(256).save(OUT / f"{name}_images.png", optimize=True)


def pair(scan: ScanData, iterations: int, refine: bool, **options: object) -> list[Run]:
    """The joint run (the seed's linear link) and the separate one (``link="none"``), same options."""
    return [
        reconstruct(scan, label, iterations, refine, link=link, **options)
        for label, link in (("joint", "linear"), ("separate", "none"))
    ]


def save_runs(name: str, runs: list[Run]) -> None:
    """The runs' curves as ``OUT/<name>.json`` (``--summary`` reads them)."""
    (OUT / f"{name}.json").write_text(json.dumps([{k: v for k, v in r.__dict__.items() if k != "final"} for r in runs]))


def compare(name: str, scan: ScanData, iterations: int, refine: bool, table: list[str], **options: object) -> list[Run]:
    runs = pair(scan, iterations, refine, **options)
    plot(name, runs)
    save_images(name, scan, runs)
    joint, sep = runs
    first_better = next(
        (i for i, (a, b) in enumerate(zip(joint.object_mse, sep.object_mse, strict=True)) if a < b), None
    )
    at = "-" if first_better is None else str(joint.iterations[first_better])
    table.append(
        f"| {name} | {joint.object_mse[-1]:.2e} | {sep.object_mse[-1]:.2e} | "
        f"{joint.object_mse_raw[-1]:.2e} | {sep.object_mse_raw[-1]:.2e} | {joint.map_error[-1]:.3f} | "
        f"{sep.map_error[-1]:.3f} ({min(sep.map_error):.3f}) | {at} | {joint.alpha:.3g} | "
        f"{joint.seconds:.0f} / {sep.seconds:.0f} |"
    )
    print(table[-1], flush=True)
    save_runs(name, runs)
    return runs


HEADER = [
    "| case | object MSE joint | object MSE separate | seed's MSE joint | seed's MSE separate | map error joint | "
    "map error separate (lowest on the way) | joint ahead from | alpha | s joint / separate |",
    "|---|---|---|---|---|---|---|---|---|---|",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--only", default="main,probe,three,bh,alpha,link,frc,floor,objects")
    parser.add_argument("--summary", action="store_true", help="only print the iteration table of the saved runs")
    args = parser.parse_args()
    if args.summary:
        summary()
        return
    torch.set_num_threads(1)
    OUT.mkdir(exist_ok=True)
    parts, n = set(args.only.split(",")), args.iterations
    table = list(HEADER)
    started = time.perf_counter()
    if "main" in parts:
        for overlap in OVERLAPS:
            base = scan_for(overlap, ("Fe",))
            for level in (0.0, 0.03):
                compare(
                    f"fe_ov{round(overlap * 100)}_noise{round(level * 100)}", noisy(base, level, 7), n, False, table
                )
    if "probe" in parts:
        for overlap in OVERLAPS:
            base = scan_for(overlap, ("Fe",))
            compare(f"fe_ov{round(overlap * 100)}_noise3_probe", noisy(base, 0.03, 7), n, True, table)
    if "three" in parts:
        base = scan_for(0.53, ("Fe", "Zn", "Ca"))
        for level in (0.0, 0.03):
            compare(f"feznca_ov53_noise{round(level * 100)}", noisy(base, level, 7), n, False, table)
    if "bh" in parts:
        for overlap, level in ((0.83, 0.0), (0.53, 0.03), (0.2, 0.03)):
            scan = noisy(scan_for(overlap, ("Fe",)), level, 7)
            name = f"fe_ov{round(overlap * 100)}_noise{round(level * 100)}_bhcg"
            compare(name, scan, n, False, table, solver="bh-cg")
    if "alpha" in parts:
        for overlap, level in ((0.83, 0.0), (0.53, 0.03)):
            scan = noisy(scan_for(overlap, ("Fe",)), level, 7)
            for factor in (0.1, 10.0):
                name = f"fe_ov{round(overlap * 100)}_noise{round(level * 100)}_alphax{factor:g}"
                compare(name, scan, n, False, table, alpha_scale=factor)
    if len(table) > len(HEADER):
        print("\n".join(table))
    if "link" in parts:
        link_table(n)
    if "frc" in parts:
        frc_table(n)
    if "floor" in parts:
        floor_table()
    if "objects" in parts:
        objects_table(n)
    print(f"total {time.perf_counter() - started:.0f} s")


def first_at(iterations: list[int], values: list[float], level: float) -> str:
    """The first iteration whose value is at or below ``level`` ("-" if none)."""
    return next((str(i) for i, v in zip(iterations, values, strict=True) if v <= level), "-")


def summary() -> None:
    """Iterations the joint run needs to reach the separate run's final errors, from the saved curves."""
    rows = [
        "| case | joint reaches separate's final object MSE at | ... seed's object MSE at | ... map error at |",
        "|---|---|---|---|",
    ]
    for path in sorted(OUT.glob("*.json")):
        joint, sep = (r for r in json.loads(path.read_text()) if r["label"] in ("joint", "separate"))
        obj = first_at(joint["iterations"], joint["object_mse"], sep["object_mse"][-1])
        raw = (
            first_at(joint["iterations"], joint["object_mse_raw"], sep["object_mse_raw"][-1])
            if "object_mse_raw" in joint
            else "-"
        )
        maps = first_at(joint["iterations"], joint["map_error"], sep["map_error"][-1])
        rows.append(f"| {path.stem} | {obj} | {raw} | {maps} |")
    print("\n".join(rows))


FLOOR_LEVELS = (1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-8)
FLOOR_CASES = (("adam", 0.0, 300), ("adam", 0.03, 300), ("bh-cg", 0.0, 200))
"""83% overlap, true probe: (solver, noise, iterations) run past the 100 of the main table."""


def floor_table() -> None:
    """Iterations joint and separate need to reach each object-MSE level at 83% overlap (true probe), and
    the lowest MSE each reaches (its floor: float32 without noise, the noise with it), from long runs."""
    rows = [
        "| case | method | " + " | ".join(f"MSE <= {v:g} at" for v in FLOOR_LEVELS) + " | lowest MSE (at) |",
        "|---|---|" + "---|" * (len(FLOOR_LEVELS) + 1),
    ]
    base = scan_for(0.83, ("Fe",))
    for solver, level, iterations in FLOOR_CASES:
        name = f"floor_fe_ov83_noise{round(level * 100)}_{solver}"
        scan = noisy(base, level, 7)
        runs = pair(scan, iterations, False, solver=solver)
        for run in runs:
            at = [first_at(run.iterations, run.object_mse, v) for v in FLOOR_LEVELS]
            k = int(np.argmin(run.object_mse))
            low = f"{run.object_mse[k]:.2e} ({run.iterations[k]})"
            rows.append(f"| {name} | {run.label} | " + " | ".join(at) + f" | {low} |")
            print(rows[-1], flush=True)
        plot(name, runs)
        save_runs(name, runs)
    print("\n".join(rows))


OBJECT_SEEDS = (2, 3, 4)
"""Simulation seeds of the further objects (the tables above use seed 1)."""


def objects_table(n: int) -> None:
    """The main comparison (Fe, 3% noise, true probe) on further random objects: Adam at every overlap,
    BH-CG at 83%; object MSE (best scalar and the seed's) and map error, joint / separate."""
    rows = [
        "| overlap | solver | object | object MSE joint / separate | seed's MSE joint / separate | "
        "map error joint / separate |",
        "|---|---|---|---|---|---|",
    ]
    cases = [(overlap, "adam") for overlap in OVERLAPS] + [(0.83, "bh-cg")]
    for overlap, solver in cases:
        for seed in OBJECT_SEEDS:
            scan = noisy(scan_for(overlap, ("Fe",), seed=seed), 0.03, 7 + seed)
            joint, sep = pair(scan, n, False, solver=solver)
            rows.append(
                f"| {round(overlap * 100)}% | {solver} | {seed} | "
                f"{joint.object_mse[-1]:.2e} / {sep.object_mse[-1]:.2e} | "
                f"{joint.object_mse_raw[-1]:.2e} / {sep.object_mse_raw[-1]:.2e} | "
                f"{joint.map_error[-1]:.3f} / {sep.map_error[-1]:.3f} |"
            )
            print(rows[-1], flush=True)
    print("\n".join(rows))


def link_table(n: int) -> None:
    """Linear vs physical link on physical-link objects with weak and with strong phase (53%, Fe, noise-free)."""
    rows = ["| object phase | link | object MSE | map error |", "|---|---|---|---|"]
    base = scan_for(0.53, ("Fe",), link="physical")
    for scale, label in ((0.1, "weak (+-0.1 rad)"), (2.5, "strong (+-2.5 rad)")):
        scan = strong_phase(base, scale)
        runs = [reconstruct(scan, link, n, False, link=link) for link in ("linear", "physical", "none")]
        for run in runs:
            rows.append(f"| {label} | {run.label} | {run.object_mse[-1]:.2e} | {run.map_error[-1]:.3f} |")
        plot(f"link_phase{scale}", runs)
        save_images(f"link_phase{scale}", scan, runs)
    print("\n".join(rows))


def frc_table(n: int) -> None:
    """FRC (0.5 threshold) of the Fe map against the truth, joint vs separate, vs the probe's cut-off."""
    rows = ["| case | probe cut-off (1/px) | FRC 0.5 joint | FRC 0.5 separate |", "|---|---|---|---|"]
    for overlap in (0.53, 0.2):
        scan = noisy(scan_for(overlap, ("Fe",)), 0.03, 7)
        truth = scan.truth
        lit = illuminated_region(truth["probe"], truth["positions"], truth["object"].shape)
        cut = probe_cutoff(truth["probe"])
        values = []
        for link in ("linear", "none"):
            run = reconstruct(scan, link, n, False, link=link)
            r, c = run.final["origin"].astype(int)
            h, w = truth["object"].shape
            freq, curve = masked_frc(run.final["elements/Fe"][r : r + h, c : c + w], truth["elements/Fe"], lit)
            values.append(frc_crossing(freq, curve))
            np.savetxt(OUT / f"frc_ov{round(overlap * 100)}_{link}.txt", np.stack([freq, curve], 1), header="freq frc")
        rows.append(
            f"| Fe, {round(overlap * 100)}% overlap, 3% noise | {cut:.3f} | {values[0]:.3f} | {values[1]:.3f} |"
        )
    print("\n".join(rows))


if __name__ == "__main__":
    main()
