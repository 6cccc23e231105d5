"""Benchmark (issue 11b): our reconstructions of the two measured scans against independent codes.

Run by hand (not in CI); prints a Markdown table and writes side-by-side PNGs::

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python tests/benchmarks/bench_peers.py [--scans petra star] \
        [--threads 1] [--out out/peers] [--reuse]

Scans (``../shared/data``, see its README):

* petra: PETRA III P25 near field, Fresnel scaling with the 3.65 mm focus distance. Peer:
  cdtools' own recipe (``cdtools_runner.py``: FancyPtycho, Adam 100 epochs lr 0.04 batch 10, then
  50 epochs lr 0.005 batch 50; it refines positions). Ours: ``ptychostream reconstruct --near-field
  --focus-distance 3.65e-3`` with ``--engine rpie --iterations 100``, ``--engine bh-cg
  --iterations 100`` and the default schedule.
* star: APS Siemens star, far field, tike's probe guess. Peer: pty-chi's LSQML
  (``ptychi_runner.py``, 64 epochs, batch 74, i.e. 7 batches as in tike's published run, positions
  fixed). Ours: ``--engine rpie --iterations 64`` and the default schedule.

Measure (``compare``): the peer's object is moved into our object's frame by the median offset of
the two codes' positions for the same frames, cropped to the bounding box of our well-illuminated
region (summed probe intensity >= 50% of its maximum, ``workers.metrics.illuminated_region``),
registered to ours to 1/20 px (``workers.metrics.register`` on the mean-removed complex images),
and stripped of a linear phase ramp and a global phase (the peak of the 4x zero-padded FFT of
ours x conj(peer) over the region). Phases are taken relative to their circular mean over the
region, which is eroded by the registration shift + 2 px. Columns:

* phase r / amplitude r: Pearson correlation of the two phase (amplitude) images over the region;
  the peer's object and its complex conjugate are both tried and the better kept (``conj``);
* phase r (q): the same after removing from each phase image its least-squares quadratic
  polynomial over the region (a slowly varying phase background, which near-field data constrain
  weakly);
* shift: the peer's frame relative to ours (offset + registration), px;
* L ours / L peer: the normalised amplitude residual sum mask (sqrt(I_model) - sqrt(I))^2 /
  sum mask I of each final state in OUR forward model (the peer's with its own probe, positions
  and, for cdtools, its per-frame weights and background); L peer (own model): cdtools' state in
  cdtools' forward model (``cdtools_runner.py``). L peer ~ L peer (own model) checks the
  convention map on a real reconstruction;
* t: the engine's own time (ours: ``history/time_s``, loading excluded; cdtools: from its first
  epoch; pty-chi: sum of its epoch times), one thread, OMP_WAIT_POLICY=PASSIVE.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from workers import layout  # noqa: E402
from workers.data import ScanData  # noqa: E402
from workers.io import load_scan, read_result  # noqa: E402
from workers.metrics import data_metrics, illuminated_region, model_intensities, register, shift_image  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
PEER_PYTHON = os.environ.get("PTYCHOSTREAM_PEERS_PYTHON", "/work/peers/bin/python")
PETRA_FOCUS_DISTANCE = 3.65e-3  # m (cdtools' examples/near_field_ptycho.py; not in the file)
STAR_EPOCHS = 64
STAR_BATCH = 74  # 516 frames in 7 batches
REGION_LEVEL = 0.5
PAD = 64  # px of ones around the peer's object, so that its crop never leaves the array


@dataclass
class Recon:
    """A final state in its own object frame: positions are the frames' window corners in ``object``."""

    name: str
    object: np.ndarray
    probe: np.ndarray
    positions: np.ndarray
    time_s: float
    weights: np.ndarray | None = None  # per-frame probe amplitude factors (cdtools refines them)
    background: np.ndarray | None = None  # (M, M) additive intensity, detector layout (cdtools)
    own_residual: float = float("nan")  # the peer's normalised amplitude residual in its own model


def run(cmd: list[str], threads: int) -> None:
    """Run ``cmd`` with ``threads`` OpenMP threads; exit with its stderr if it fails."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMP_WAIT_POLICY="PASSIVE")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def ours(scan: Path, out: Path, args: list[str], threads: int, reuse: bool) -> Recon:
    """``ptychostream reconstruct`` with ``args``; the result's object, probe and positions."""
    if not (reuse and out.exists()):
        cli = [str(ROOT / ".venv" / "bin" / "ptychostream"), "reconstruct", str(scan), "-o", str(out)]
        run([*cli, *args, "--threads", str(threads), "--quiet", "--json"], threads)
    r = read_result(out)
    name = " ".join(a for a in args if a not in ("--near-field", "--focus-distance", str(PETRA_FOCUS_DISTANCE)))
    return Recon(name or f"default ({r['attrs']['engines']})", r["object"], r["probe"], r["positions"], r["time_s"][-1])


def cdtools_petra(out: Path, threads: int, reuse: bool) -> Recon:
    """cdtools' near-field recipe on the PETRA scan (peer venv)."""
    if not (reuse and out.exists()):
        cmd = [PEER_PYTHON, str(HERE / "cdtools_runner.py"), str(SHARED_DATA / "petra_p25_nearfield.cxi")]
        run(
            [*cmd, "--focus-distance", str(PETRA_FOCUS_DISTANCE), "--threads", str(threads), "--out", str(out)], threads
        )
    with np.load(out) as f:
        return Recon(
            "cdtools Adam 100+50",
            f["object"],
            f["probe"],
            f["positions"],
            float(f["time_s"][-1]),
            f["weights"],
            f["background"],
            float(f["residual"]),
        )


def ptychi_star(data: ScanData, out: Path, threads: int, reuse: bool) -> Recon:
    """pty-chi's LSQML on the Siemens star from tike's probe guess and a unit object (peer venv)."""
    m = data.frame_size
    positions = data.positions - data.positions.min(0) + 8
    shape = tuple(int(s) for s in np.ceil(positions.max(0) + m + 8))
    if not (reuse and out.exists()):
        interchange = out.with_suffix(".in.npz")
        np.savez(
            interchange,
            intensities=data.intensities,
            positions=positions,
            probe=data.probe,
            object=np.ones(shape, np.complex64),
        )
        cmd = [PEER_PYTHON, str(HERE / "ptychi_runner.py"), str(interchange), "--engine", "lsqml"]
        cmd += ["--epochs", str(STAR_EPOCHS), "--batch-size", str(STAR_BATCH), "--threads", str(threads)]
        run([*cmd, "--out", str(out)], threads)
    with np.load(out) as f:
        return Recon(f"pty-chi LSQML {STAR_EPOCHS}", f["object"], f["probe"], positions, float(f["epoch_times"].sum()))


def residual(data: ScanData, recon: Recon) -> float:
    """Normalised amplitude residual of ``recon`` in OUR forward model, with its per-frame weights and
    background where it has them: sum mask (sqrt(w_r^2 I_r + B) - sqrt(I))^2 / sum mask I."""
    if recon.weights is None and recon.background is None:
        return data_metrics(data, recon.object, recon.probe, recon.positions)["amplitude_residual"]
    kind = data.geometry.kind
    mask = np.ones((data.frame_size,) * 2, bool) if data.mask is None else layout.to_model(data.mask, kind)
    weights = np.ones(data.n_frames) if recon.weights is None else recon.weights
    background = 0.0 if recon.background is None else layout.to_model(recon.background, kind)
    num = den = 0.0
    start = 0
    for model, measured in model_intensities(data, recon.object, recon.probe, recon.positions):
        model = model * weights[start : start + len(model), None, None] ** 2 + background
        start += len(model)
        num += float(((np.sqrt(model) - np.sqrt(measured)) ** 2)[:, mask].sum())
        den += float(measured[:, mask].sum())
    return num / den


def _ramp(product: np.ndarray, pad: int = 4) -> np.ndarray:
    """Frequency (row, col) in cycles/px of the strongest linear phase in ``product`` (zero-padded FFT peak)."""
    shape = np.array(product.shape)
    spectrum = np.abs(np.fft.fft2(product, s=tuple(pad * shape)))
    peak = np.array(np.unravel_index(np.argmax(spectrum), spectrum.shape), dtype=float)
    return np.where(peak >= pad * shape / 2, peak - pad * shape, peak) / (pad * shape)


def _relative_phase(image: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Phase of ``image`` relative to its circular mean over ``region``."""
    mean = np.angle((image[region] / np.maximum(np.abs(image[region]), 1e-12)).sum())
    return np.angle(image * np.exp(-1j * mean))


def _without_quadratic(phase: np.ndarray, region: np.ndarray) -> np.ndarray:
    """``phase`` minus its least-squares fit by a quadratic polynomial in (row, col) over ``region``."""
    yy, xx = np.mgrid[: phase.shape[0], : phase.shape[1]].astype(float)
    yy, xx = yy - yy[region].mean(), xx - xx[region].mean()
    terms = np.stack([np.ones_like(yy), yy, xx, yy * yy, xx * xx, yy * xx], -1)
    coef, *_ = np.linalg.lstsq(terms[region], phase[region], rcond=None)
    return phase - terms @ coef


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def compare(ref: Recon, peer: Recon) -> dict:
    """Phase and amplitude correlation of ``peer`` with ``ref`` on ``ref``'s well-illuminated region (docstring)."""
    region = illuminated_region(ref.probe, ref.positions, ref.object.shape, REGION_LEVEL)
    rows, cols = np.nonzero(region)
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    offset = np.round(np.median(peer.positions - ref.positions, axis=0)).astype(int) + PAD
    padded = np.pad(peer.object, PAD, constant_values=1)
    a = ref.object[r0:r1, c0:c1]
    win = region[r0:r1, c0:c1]
    best: dict = {}
    for conj in (False, True):
        b = padded[r0 + offset[0] : r1 + offset[0], c0 + offset[1] : c1 + offset[1]]
        b = b.conj() if conj else b
        shift = register((a - a[win].mean()) * win, (b - b[win].mean()) * win)
        b = shift_image(b, shift)
        inner = win.copy()
        edge = int(np.ceil(np.abs(shift).max())) + 2
        inner[:edge], inner[-edge:], inner[:, :edge], inner[:, -edge:] = False, False, False, False
        ramp = _ramp(np.where(inner, a * b.conj(), 0))
        yy, xx = np.mgrid[: a.shape[0], : a.shape[1]]
        b = b * np.exp(2j * np.pi * (ramp[0] * yy + ramp[1] * xx))
        b = b * np.exp(1j * np.angle((a[inner] * b[inner].conj()).sum()))
        pa, pb = _relative_phase(a, inner), _relative_phase(b, inner)
        result = {
            "phase_r": _pearson(pa[inner], pb[inner]),
            "phase_r_q": _pearson(_without_quadratic(pa, inner)[inner], _without_quadratic(pb, inner)[inner]),
            "amplitude_r": _pearson(np.abs(a)[inner], np.abs(b)[inner]),
            "conj": conj,
            "shift": (shift + offset - PAD).round(2).tolist(),
            "ramp": ramp.round(4).tolist(),
            "ours": a,
            "peer": b,
            "region": inner,
        }
        if not best or result["phase_r"] > best["phase_r"]:
            best = result
    return best


def whole(recon: Recon) -> tuple:
    """A panel: the phase of the object's scanned area (summed probe intensity >= 2% of its maximum)."""
    lit = illuminated_region(recon.probe, recon.positions, recon.object.shape, 0.02)
    rows, cols = np.nonzero(lit)
    crop = (slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1))
    phase = _relative_phase(recon.object[crop], lit[crop])
    lo, hi = np.percentile(phase[lit[crop]], [1, 99])
    return f"{recon.name}: phase, whole scan", phase, "twilight", lo, hi


def render(path: Path, title: str, peer: Recon, rows: list[tuple[Recon, dict]]) -> None:
    """PNG: per row both whole objects' phase, ours vs the registered peer on the compared region
    (amplitude and phase), and both probes' amplitude."""
    fig, axes = plt.subplots(len(rows), 8, figsize=(32, 4.2 * len(rows)), squeeze=False)
    for ax_row, (recon, cmp) in zip(axes, rows, strict=True):
        region = cmp["region"]
        panels = [whole(recon), whole(peer)]
        for label, image in ((recon.name, cmp["ours"]), (peer.name, cmp["peer"])):
            amp = np.abs(image)
            lo, hi = np.percentile(amp[region], [1, 99])
            panels.append((f"{label}: amplitude", amp, "gray", lo, hi))
            phase = _relative_phase(image, region)
            lo, hi = np.percentile(phase[region], [1, 99])
            panels.append((f"{label}: phase", phase, "twilight", lo, hi))
        panels.append((f"{recon.name}: |probe|", np.abs(recon.probe[0]), "viridis", None, None))
        panels.append((f"{peer.name}: |probe|", np.abs(peer.probe[0]), "viridis", None, None))
        for ax, (label, image, cmap, lo, hi) in zip(ax_row, panels, strict=True):
            ax.imshow(image, cmap=cmap, vmin=lo, vmax=hi)
            if image.shape == region.shape:
                ax.contour(region, levels=[0.5], colors="yellow", linewidths=0.5)
            ax.set_title(label, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        ax_row[0].set_ylabel(f"phase r = {cmp['phase_r']:.3f}\namplitude r = {cmp['amplitude_r']:.3f}")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def bench_scan(name: str, data: ScanData, peer: Recon, mine: list[Recon], out: Path) -> list[dict]:
    """Compare each of ``mine`` with ``peer``, render, and return table rows."""
    torch.set_num_threads(1)
    peer_loss = residual(data, peer)
    rows, pairs = [], []
    for recon in mine:
        cmp = compare(recon, peer)
        pairs.append((recon, cmp))
        loss = residual(data, recon)
        rows.append(
            {
                "scan": name,
                "ours": recon.name,
                "peer": peer.name,
                "phase_r": cmp["phase_r"],
                "phase_r_q": cmp["phase_r_q"],
                "amplitude_r": cmp["amplitude_r"],
                "conj": cmp["conj"],
                "shift": cmp["shift"],
                "ramp": cmp["ramp"],
                "L_ours": loss,
                "L_peer": peer_loss,
                "L_peer_own": peer.own_residual,
                "t_ours": recon.time_s,
                "t_peer": peer.time_s,
            }
        )
    render(out / f"{name}.png", f"{name}: ours (left pair) vs {peer.name} (right pair), registered", peer, pairs)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", nargs="+", choices=("petra", "star"), default=["petra", "star"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "peers")
    parser.add_argument("--reuse", action="store_true", help="reuse reconstructions already in --out")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    if "petra" in args.scans:
        scan = SHARED_DATA / "petra_p25_nearfield.cxi"
        near = ["--near-field", "--focus-distance", str(PETRA_FOCUS_DISTANCE)]
        data = load_scan(scan, near_field=True, focus_distance=PETRA_FOCUS_DISTANCE)
        peer = cdtools_petra(args.out / "petra_cdtools.npz", args.threads, args.reuse)
        mine = [
            ours(scan, args.out / f"petra_{label}.h5", [*near, *extra], args.threads, args.reuse)
            for label, extra in (
                ("rpie", ["--engine", "rpie", "--iterations", "100"]),
                ("bh-cg", ["--engine", "bh-cg", "--iterations", "100"]),
                ("default", []),
            )
        ]
        rows += bench_scan("petra", data, peer, mine, args.out)
    if "star" in args.scans:
        scan = SHARED_DATA / "tike_siemens_star.npz.bz2"
        data = load_scan(scan)
        peer = ptychi_star(data, args.out / "star_ptychi.npz", args.threads, args.reuse)
        mine = [
            ours(scan, args.out / f"star_{label}.h5", extra, args.threads, args.reuse)
            for label, extra in (("rpie", ["--engine", "rpie", "--iterations", str(STAR_EPOCHS)]), ("default", []))
        ]
        rows += bench_scan("star", data, peer, mine, args.out)

    header = ("scan", "ours", "peer", "phase r", "phase r (q)", "amplitude r", "conj", "shift (px)", "L ours", "L peer")
    header += ("L peer (own model)", "t ours (s)", "t peer (s)")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        cells = (
            r["scan"],
            r["ours"],
            r["peer"],
            f"{r['phase_r']:.3f}",
            f"{r['phase_r_q']:.3f}",
            f"{r['amplitude_r']:.3f}",
            r["conj"],
        )
        cells += (r["shift"], f"{r['L_ours']:.4g}", f"{r['L_peer']:.4g}", f"{r['L_peer_own']:.4g}")
        cells += (f"{r['t_ours']:.0f}", f"{r['t_peer']:.0f}")
        print("| " + " | ".join(map(str, cells)) + " |")
    print(json.dumps(rows, default=str), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
