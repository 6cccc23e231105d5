"""The ``ptychostream`` command line. Heavy modules (torch) are imported inside the commands."""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import ValidationError

from workers.engines.options import EngineName
from workers.errors import DataError, DeviceError


class UsageError(Exception):
    """A command-line mistake; printed as one line, exit status 2."""


def _option_pairs(pairs: Sequence[str]) -> dict[str, Any]:
    """``key=value`` strings into a dict, values parsed as JSON where they parse."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--option expects key=value, got {pair!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def cmd_simulate(args: argparse.Namespace) -> dict[str, Any]:
    from workers.io import write_cxi
    from workers.simulate import simulate

    data = simulate(
        probe_size=args.probe_size,
        n_positions=args.positions,
        overlap=args.overlap,
        photons=args.photons,
        near_field=args.near_field,
        probe_kind=args.probe,
        scan=args.scan,
        position_error=args.position_error,
        seed=args.seed,
    )
    write_cxi(args.out, data, data.truth)
    return {
        "file": args.out,
        "frames": data.n_frames,
        "frame_size": data.frame_size,
        "object_shape": list(data.truth["object"].shape),
        "propagation": data.geometry.kind,
        "pixel_size_m": data.geometry.pixel_size,
        "mean_counts_per_frame": float(data.intensities.sum(axis=(1, 2)).mean()),
    }


def cmd_reconstruct(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from tqdm import tqdm

    from workers.devices import resolve_device
    from workers.io import load_scan
    from workers.runtime import Progress, Stage, run_schedule

    device = resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    options = _option_pairs(args.option)
    if args.batch_size is not None:
        options["batch_size"] = args.batch_size
    stage = Stage.parse(args.engine, args.iterations, options)
    data = load_scan(args.input, near_field=args.near_field or None, focus_distance=args.focus_distance)
    bar = tqdm(total=args.iterations, desc=args.engine, unit="it", disable=args.quiet, file=sys.stderr)

    def report(p: Progress) -> None:
        bar.set_postfix(loss=f"{p.loss:.4g}", refresh=False)
        bar.update(1)

    try:
        result = run_schedule(data, [stage], device=device, n_modes=args.modes, seed=args.seed, on_progress=report)
    finally:
        bar.close()
    result.write(args.out)
    return {
        "file": args.out,
        "engine": args.engine,
        "iterations": int(result.attrs["iterations"]),
        "device": str(device),
        "final_loss": float(result.loss[-1]) if len(result.loss) else math.nan,
        "wall_s": float(result.time_s[-1]) if len(result.time_s) else 0.0,
    }


def cmd_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from workers.io import load_scan, read_result
    from workers.metrics import data_metrics, truth_metrics

    result = read_result(args.result)
    data = load_scan(args.truth)
    if len(result["positions"]) != data.n_frames:
        raise UsageError(
            f"{args.result}: has {len(result['positions'])} positions but {args.truth} has {data.n_frames} frames"
        )
    out: dict[str, Any] = {"result": args.result, "data": args.truth}
    out.update(data_metrics(data, result["object"], result["probe"], result["positions"]))
    if data.truth:
        truth = dict(data.truth)
        out.update(truth_metrics(result["object"], result["origin"], truth, result["positions"]))
        if not args.json:
            out.pop("frc")
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ptychostream", description="Streaming ptychography: simulate, reconstruct and evaluate scans."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("simulate", help="write a simulated scan (with its ground truth) as CXI")
    p.add_argument("out", metavar="OUT.cxi")
    p.add_argument("--probe-size", type=int, default=128, help="frame/probe size M in pixels (default 128)")
    p.add_argument("--positions", type=int, default=400, help="number of scan positions (default 400)")
    p.add_argument("--overlap", type=float, default=0.7, help="1 - step / beam diameter (default 0.7)")
    p.add_argument("--photons", type=float, default=1e6, help="photons per frame; inf for no noise (default 1e6)")
    p.add_argument("--near-field", action="store_true", help="near-field (Fresnel) geometry")
    p.add_argument("--probe", choices=["focused", "structured", "near"], help="probe kind (default by geometry)")
    p.add_argument("--scan", choices=["fermat", "raster", "random"], default="fermat", help="scan pattern")
    p.add_argument("--position-error", type=float, default=0.0, help="RMS error added to recorded positions, px")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("reconstruct", help="reconstruct a scan file into a result HDF5")
    p.add_argument("input", metavar="IN.cxi", help="CXI/HDF5 scan, or a tike-style .npz[.bz2]")
    p.add_argument("-o", "--out", required=True, metavar="OUT.h5")
    p.add_argument("--engine", required=True, choices=[e.value for e in EngineName])
    p.add_argument("--iterations", type=int, default=100, help="epochs (default 100)")
    p.add_argument("--batch-size", type=int, help="frames per update (engine default otherwise)")
    p.add_argument("--modes", type=int, default=1, help="probe modes (default 1)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="engine option (repeatable)")
    p.add_argument("--near-field", action="store_true", help="treat the file as near-field (Fresnel)")
    p.add_argument("--focus-distance", type=float, help="focus-to-sample distance (m): cone-beam near field")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser("evaluate", help="data and (if the file has one) ground-truth metrics of a result")
    p.add_argument("result", metavar="OUT.h5")
    p.add_argument("--truth", required=True, metavar="IN.cxi", help="the scan (simulated files carry the truth)")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    p.set_defaults(func=cmd_evaluate)
    return parser


def _print(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary))
        return
    for key, value in summary.items():
        print(f"{key:>22}: {value:.6g}" if isinstance(value, float) else f"{key:>22}: {value}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], dict[str, Any]] = args.func
    try:
        summary = func(args)
    except (UsageError, DataError, DeviceError, ValueError) as exc:
        message = str(exc) if not isinstance(exc, ValidationError) else _validation_message(exc)
        print(f"ptychostream {args.command}: error: {message}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"ptychostream {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ptychostream {args.command}: interrupted", file=sys.stderr)
        return 130
    _print(summary, args.json)
    return 0


def _validation_message(exc: ValidationError) -> str:
    parts = [f"{'.'.join(str(x) for x in e['loc'])}: {e['msg']}" for e in exc.errors()]
    return "invalid engine options: " + "; ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
