"""``ptychostream reconstruct``: the arguments become a ``JobSpec`` that ``workers.runtime.run_job`` runs (the
same driver as the API's workers); and ``evaluate``, which scores a result."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from service.cli.common import Subparsers, UsageError, add_preprocess_arguments, option_pairs, preprocessing
from service.cli.stream import add_limit_arguments, stream_limits
from workers.engines.options import EngineName
from workers.job import JobSpec, StageSpec
from workers.schedule import DEFAULT_SCHEDULE, PATIENCE, schedule_text


def _schedule(args: argparse.Namespace, options: dict[str, Any]) -> list[StageSpec]:
    """The stages the command line asks for: ``--schedule``, one ``--engine`` stage, or the default schedule."""
    from workers.schedule import parse_schedule

    if args.schedule and args.engine:
        raise UsageError("give --engine or --schedule, not both")
    if args.engine is None and args.iterations is not None:
        raise UsageError("--iterations needs --engine (a --schedule gives each stage's iterations)")
    if args.schedule:
        return parse_schedule(args.schedule, options)
    if args.engine is None:
        return parse_schedule(schedule_text(DEFAULT_SCHEDULE), options)
    default = 100
    iterations = args.iterations_after_scan if args.listen else (args.iterations or default)
    return parse_schedule(f"{args.engine}:{iterations}", options)


def _job(args: argparse.Namespace) -> JobSpec:
    """The job the ``reconstruct`` arguments describe (the same model the API and the workers run)."""
    from workers.job import FileInput, JobSpec, StreamInput
    from workers.probe_spec import ProbeStart

    if (args.input is None) == (args.listen is None):
        raise UsageError("give exactly one of IN.cxi and --listen tcp://HOST:PORT")
    options = option_pairs(args.option)
    if args.batch_size is not None:
        options["batch_size"] = args.batch_size
    job_input: FileInput | StreamInput
    if args.listen is not None:
        job_input = StreamInput(
            stream=args.listen,
            positions=args.positions_listen,
            idle_timeout_s=args.idle_timeout,
            preprocess=preprocessing(args),
            limits=stream_limits(args),
        )
    else:
        job_input = FileInput(
            file=args.input, near_field=True if args.near_field else None, focus_distance=args.focus_distance
        )
    return JobSpec(
        input=job_input,
        schedule=_schedule(args, options),
        device=args.device,
        seed=args.seed,
        modes=args.modes,
        probe=ProbeStart(file=args.probe, diameter=args.probe_diameter, defocus=args.probe_defocus),
        output=args.out,
    )


def cmd_reconstruct(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from tqdm import tqdm

    from workers.runtime import Progress, run_job

    job = _job(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    live = args.listen is not None
    total = sum(s.iterations for s in job.schedule)
    bar = tqdm(total=None if live else total, desc="reconstruct", unit="it", disable=args.quiet, file=sys.stderr)

    def report(p: Progress) -> None:
        bar.set_description(f"{p.engine}{' (live)' if p.streaming else ''}", refresh=False)
        bar.set_postfix(loss=f"{p.loss:.4g}", frames=p.frames_used, refresh=False)
        bar.update(1)

    try:
        result = run_job(job, on_progress=report)
    finally:
        bar.close()
    if args.png:
        summary_png = write_pngs(args.out, {**result.state, "attrs": result.attrs})
    summary = {
        "file": args.out,
        "schedule": schedule_text(job.schedule),
        "iterations": int(result.attrs["iterations"]),
        "device": str(result.attrs["device"]),
        "final_loss": float(result.loss[-1]) if len(result.loss) else math.nan,
        "wall_s": float(result.time_s[-1]) if len(result.time_s) else 0.0,
    }
    if live:
        for key in ("frames_received", "frames_rejected", "frames_missing"):
            summary[key] = int(result.attrs[key])
    if args.png:
        summary["png"] = summary_png
    return summary


def write_pngs(out: str, result: dict[str, Any]) -> list[str]:
    """The result's amplitude, phase, probe and element maps as annotated PNGs beside ``out``
    (``OUT_amplitude.png``, ..., ``OUT_Fe.png``)."""
    from workers.images import render_result, result_kinds

    stem = str(Path(out).with_suffix(""))
    paths = []
    for kind in result_kinds(result):
        path = f"{stem}_{kind.removeprefix('elements/')}.png"
        Path(path).write_bytes(render_result(result, kind))
        paths.append(path)
    return paths


def cmd_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from workers.io import load_scan, read_result, result_load_options
    from workers.metrics import data_metrics, truth_metrics
    from workers.xrf_metrics import element_metrics

    result = read_result(args.result)
    geometry = result_load_options(result["attrs"])
    if args.near_field or args.focus_distance:
        geometry = {"near_field": True, "focus_distance": args.focus_distance}
    data = load_scan(args.truth, **geometry)
    if len(result["positions"]) != data.n_frames:
        raise UsageError(
            f"{args.result}: has {len(result['positions'])} positions but {args.truth} has {data.n_frames} frames"
        )
    out: dict[str, Any] = {"result": args.result, "data": args.truth, "propagation": data.geometry.kind}
    out.update(data_metrics(data, result["object"], result["probe"], result["positions"]))
    if data.truth:
        truth = dict(data.truth)
        out.update(truth_metrics(result["object"], result["origin"], truth, result["positions"]))
        out.update(element_metrics(result, truth))
        if not args.json:
            out.pop("frc")
    return out


def register(sub: Subparsers) -> None:
    """Add the ``reconstruct`` and ``evaluate`` commands."""
    p = sub.add_parser("reconstruct", help="reconstruct a scan file (or a live stream) into a result HDF5")
    p.add_argument("input", nargs="?", metavar="IN.cxi", help="CXI/HDF5 scan, or a tike-style .npz[.bz2]")
    p.add_argument("--listen", metavar="tcp://HOST:PORT", help="reconstruct a live scan arriving on this endpoint")
    p.add_argument("--positions-listen", metavar="tcp://HOST:PORT", help="separate position stream (with --listen)")
    p.add_argument(
        "--iterations-after-scan", type=int, default=100, help="epochs of --engine after the scan ends (--listen)"
    )
    p.add_argument("--idle-timeout", type=float, default=60.0, help="s without data that end a live scan")
    p.add_argument("-o", "--out", required=True, metavar="OUT.h5")
    p.add_argument(
        "--engine",
        choices=[e.value for e in EngineName],
        help="one engine for the whole run; neither --engine nor --schedule: the default schedule",
    )
    p.add_argument("--iterations", type=int, help="epochs of --engine (default 100)")
    p.add_argument(
        "--schedule",
        metavar="SPEC",
        help="stages run in turn, ENGINE:EPOCHS[:TOLERANCE] comma-separated, e.g. rpie:5,bh-cg:100 "
        f"(default: {schedule_text(DEFAULT_SCHEDULE)}; a stage with a TOLERANCE ends when its loss "
        f"falls by less than that fraction over {PATIENCE} epochs)",
    )
    p.add_argument("--batch-size", type=int, help="frames per update (engine default otherwise)")
    p.add_argument("--modes", type=int, default=1, help="probe modes, 1-16 (default 1)")
    p.add_argument(
        "--probe",
        metavar="FILE",
        help="start from this probe: a result or ptychodus product (HDF5 'probe'), a CXI file's probe, .npy/.npz",
    )
    p.add_argument("--probe-diameter", type=float, metavar="PX", help="start from a beam this wide (pixels)")
    p.add_argument("--probe-defocus", type=float, metavar="M", help="with the quadratic phase of this defocus (m)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="engine option (repeatable)")
    p.add_argument("--near-field", action="store_true", help="treat the file as near-field (Fresnel)")
    p.add_argument("--focus-distance", type=float, help="focus-to-sample distance (m): cone-beam near field")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--png", action="store_true", help="also write OUT_{amplitude,phase,probe}.png (annotated)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    add_preprocess_arguments(p)
    add_limit_arguments(p)
    p.set_defaults(func=cmd_reconstruct)
    p = sub.add_parser("evaluate", help="data and (if the file has one) ground-truth metrics of a result")
    p.add_argument("result", metavar="OUT.h5")
    p.add_argument("--truth", required=True, metavar="IN.cxi", help="the scan (simulated files carry the truth)")
    p.add_argument("--near-field", action="store_true", help="near-field geometry (default: as the result records)")
    p.add_argument("--focus-distance", type=float, help="focus-to-sample distance (m): cone-beam near field")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    p.set_defaults(func=cmd_evaluate)
