"""Acceptance benchmark of the probe start (issue 11c): the default schedule WITHOUT a probe guess.

On simulated far-field scans with different probes (focused Airy-like, zone plate with rings at
25% and 50% of the frame, astigmatic KB-like, structured/diffuser) at 1e5 and 1e6 photons per
frame, plus one scan simulated by a peer (cdtools, ``cdtools_simulate.py`` in the peers venv,
read back through our CXI reader), the default schedule must reach <= 1.5x the truth's
amplitude residual (the true object/probe/positions on the same noisy data) within 200 epochs
and an object cRMS <= 0.15 after registration (shift, phase ramp, global scale, twin image).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python tests/benchmarks/bench_start.py [--only NAME ...]

Prints a table (a full run also prints it with its heading and command, for
tests/benchmarks/RESULTS.md) and renders each reconstruction next to the truth in out/start-NAME.png. One torch thread.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from workers import metrics  # noqa: E402
from workers.data import ScanData  # noqa: E402
from workers.io import load_scan  # noqa: E402
from workers.probe_start import beam_diameter, initial_probe  # noqa: E402
from workers.runtime import Stage, run_schedule  # noqa: E402
from workers.simulate import make_object, make_scan, simulate  # noqa: E402

PEERS_PYTHON = Path("/work/peers/bin/python")
KINDS = ("airy", "zone-plate-25", "zone-plate-50", "kb", "structured")
PHOTONS = (1e5, 1e6)
RATIO_GOAL, CRMS_GOAL = 1.5, 0.15
N_POSITIONS, SIZE = 200, 64


def default_stages() -> list[Stage]:
    """The default schedule as ``run_schedule`` stages."""
    from workers.schedule import default_schedule

    return [Stage.from_spec(s) for s in default_schedule()]


def cdtools_scan(photons: float, seed: int) -> ScanData:
    """A zone-plate scan simulated and written by cdtools, read by ``workers.io.load_scan``."""
    rng = np.random.default_rng(seed)
    step = 0.3 * 0.35 * SIZE  # 70% overlap of a beam ~35% of the frame wide
    corners = np.round(make_scan(N_POSITIONS, step, "fermat", rng))
    corners = corners - corners.min(0) + 4
    shape = tuple(int(s) for s in corners.max(0) + SIZE + 4)
    obj = make_object(shape, rng)
    with tempfile.TemporaryDirectory() as tmp:
        inp, out, probe = Path(tmp, "in.npz"), Path(tmp, "scan.cxi"), Path(tmp, "probe.npy")
        np.savez(inp, object=obj, corners=corners, photons=photons, seed=seed, size=SIZE)
        script = ROOT / "tests" / "benchmarks" / "cdtools_simulate.py"
        subprocess.run([str(PEERS_PYTHON), str(script), str(inp), str(out), str(probe)], check=True)
        data = load_scan(out)
        true_probe = np.load(probe)
    offset = data.positions - corners
    spread = float(np.ptp(offset, axis=0).max())
    if spread > 1e-3:
        raise SystemExit(f"cdtools scan: our reader's positions differ from cdtools' by a non-constant {spread:g} px")
    data.positions = data.positions - offset.mean(0)
    data.truth = {"object": obj, "probe": true_probe, "positions": corners}
    return data


def render(name: str, data: ScanData, state: dict[str, np.ndarray], twin: bool) -> Path:
    """out/start-NAME.png: object phase and amplitude and probe amplitude, truth (top) and ours (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    truth = data.truth
    t_obj = truth["object"]
    o = np.round(state["origin"]).astype(int)
    ours = np.ones_like(t_obj)
    h = min(t_obj.shape[0], state["object"].shape[0] - o[0])
    w = min(t_obj.shape[1], state["object"].shape[1] - o[1])
    ours[:h, :w] = state["object"][o[0] : o[0] + h, o[1] : o[1] + w]
    region = metrics.illuminated_region(truth["probe"], truth["positions"], t_obj.shape)
    rows, cols = np.nonzero(region)
    crop = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    ref, mov = t_obj[crop], ours[crop]
    probe = state["probe"][0]
    if twin:
        mov, probe = mov[::-1, ::-1].conj(), probe[::-1, ::-1].conj()
    inside = region[crop]
    mov = mov * (ref * mov.conj())[inside].sum() / (np.abs(mov[inside]) ** 2).sum()  # the global complex scale
    fig, axes = plt.subplots(2, 3, figsize=(10, 6.5))
    for row, (label, obj, p) in enumerate((("truth", ref, truth["probe"][0]), ("ours", mov, probe))):
        axes[row, 0].imshow(np.angle(obj), cmap="viridis", vmin=-1.2, vmax=1.2)
        axes[row, 1].imshow(np.abs(obj), cmap="gray", vmin=0, vmax=1.2)
        axes[row, 2].imshow(np.abs(p), cmap="magma")
        for ax, what in zip(axes[row], ("object phase", "object amplitude", "probe amplitude"), strict=True):
            ax.set_title(f"{label}: {what}", fontsize=9)
            ax.axis("off")
    fig.suptitle(name)
    path = ROOT / "out" / f"start-{name}.png"
    path.parent.mkdir(exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def run_one(name: str, data: ScanData) -> dict[str, object]:
    """Search (timed on its own for the record), then the default schedule (which searches again)."""
    t0 = time.perf_counter()
    probe, record = initial_probe(data)
    search_s = time.perf_counter() - t0
    t = data.truth
    floor = metrics.data_metrics(data, t["object"], t["probe"], t["positions"])["amplitude_residual"]
    t0 = time.perf_counter()
    result = run_schedule(data, default_stages(), device=torch.device("cpu"))
    run_s = time.perf_counter() - t0
    s = result.state
    residual = metrics.data_metrics(data, s["object"], s["probe"], s["positions"])["amplitude_residual"]
    tm = metrics.truth_metrics(s["object"], s["origin"], t)
    render(name, data, s, tm["twin"])
    return {
        "name": name,
        "start": record.split(" (best")[0],
        "start_beam": beam_diameter(probe) / beam_diameter(t["probe"]),
        "search_s": search_s,
        "epochs": len(result.loss),
        "run_s": run_s,
        "search_share": search_s / (float(result.time_s[-1]) / len(result.loss) * 200),
        "ratio": residual / floor,
        "crms": tm["crms"],
        "twin": tm["twin"],
    }


def scans(only: list[str]) -> list[tuple[str, object]]:
    """(name, builder) of every benchmark scan, filtered by ``only`` (substrings)."""
    out: list[tuple[str, object]] = []
    for kind in KINDS:
        for photons in PHOTONS:
            name = f"{kind}-{photons:.0e}".replace("+0", "")

            def build(kind: str = kind, photons: float = photons) -> ScanData:
                return simulate(probe_size=SIZE, n_positions=N_POSITIONS, photons=photons, probe_kind=kind, seed=1)

            out.append((name, build))
    out.append(("cdtools-zone-plate-1e6", lambda: cdtools_scan(1e6, 2)))
    return [(n, b) for n, b in out if not only or any(o in n for o in only)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", nargs="*", default=[], help="run only scans whose name contains one of these")
    args = parser.parse_args()
    torch.set_num_threads(1)
    header = (
        "| scan | start (data-derived) | start/true beam | search s | search / 200 epochs | epochs "
        "| run s (incl. search) | residual / truth's | cRMS | twin | pass |"
    )
    lines = [header, "|" + "---|" * 11]
    print(header, flush=True)
    for name, build in scans(args.only):
        r = run_one(name, build())  # type: ignore[operator]
        ok = r["ratio"] <= RATIO_GOAL and r["crms"] <= CRMS_GOAL  # type: ignore[operator]
        line = (
            f"| {name} | {r['start']} | {r['start_beam']:.2f} | {r['search_s']:.1f} | {r['search_share']:.0%} | "
            f"{r['epochs']} | "
            f"{r['run_s']:.0f} | {r['ratio']:.3f} | {r['crms']:.3f} | {'yes' if r['twin'] else 'no'} | "
            f"{'yes' if ok else 'NO'} |"
        )
        lines.append(line)
        print(line, flush=True)
    if not args.only:
        command = "OMP_WAIT_POLICY=PASSIVE .venv/bin/python tests/benchmarks/bench_start.py"
        text = RESULTS_HEAD.format(command=command) + "\n".join(lines) + "\n"
        print("\n" + text)


RESULTS_HEAD = """# Probe start without a guess (issue 11c)

`{command}`

Default schedule, no probe guess in the file, 64 px frames, 200 positions (Fermat spiral, 70%
overlap), one torch thread on a shared 2-core VM. Goal per scan: residual <= 1.5x the truth's
(amplitude residual of the true object, probe and positions on the same noisy data) and object
cRMS <= 0.15 after registration (shift, phase ramp, global complex scale, twin image). "search s":
the data-derived probe search alone; "search / 200 epochs": its time over 200 epochs of the default
schedule's engines at their measured time per epoch (the budget: 10-15%); "run s": the whole default
schedule (which stops when the loss stops improving), search included. "start/true beam": the
start's beam diameter (2 sqrt 2 x RMS radius) over the true probe's. Reconstructions next to the
truth: out/start-NAME.png.

Before (measured once by hand, not by this script): the previous data-derived guess
(`workers.data.probe_guess` at commit e679556, one isotropic defocus matched to the width of the
mean pattern's autocorrelation) underestimates high-NA beams (start/true beam 0.47 on
zone-plate-50, 0.34 on kb), and the same default schedule from it fails: zone-plate-50-1e5
residual 1.06x the truth's, cRMS 0.32; kb-1e5 1.14x, cRMS 0.44 (zone-plate-25-1e5 passes: 0.90x,
0.053). From the new start both pass (table).

"""

if __name__ == "__main__":
    main()
