"""The ``ptychostream`` command line. Heavy modules (torch) are imported inside the commands."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from workers.concurrency import share_cores
from workers.engines.options import EngineName
from workers.errors import DataError, DeviceError
from workers.job import JobSpec, Preprocessing, StageSpec
from workers.schedule import DEFAULT_SCHEDULE, PATIENCE, schedule_text
from workers.stream.protocol import Protocol

PROTOCOLS = [p.value for p in Protocol]


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


def _add_preprocess_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("frame preprocessing (live streams)")
    g.add_argument("--crop", type=int, metavar="M", help="crop frames to M x M around the centre")
    g.add_argument("--centre", type=int, nargs=2, metavar=("ROW", "COL"), help="zero frequency on the detector")
    g.add_argument("--bin", type=int, default=1, metavar="B", help="sum B x B pixels after cropping")
    g.add_argument("--hot", type=float, metavar="COUNTS", help="pixels above this are replaced by their neighbours")
    g.add_argument("--zinger", type=float, metavar="FACTOR", help="remove pixels above FACTOR x their neighbours")
    g.add_argument("--dark", metavar="DARK.npy", help="dark/background counts (Y, X) to subtract")
    g.add_argument("--bad-pixels", metavar="BAD.npy", help="(Y, X) array, nonzero marks a bad pixel")


def _preprocessing(args: argparse.Namespace) -> Preprocessing:
    return Preprocessing(
        size=args.crop,
        centre=tuple(args.centre) if args.centre else None,
        binning=args.bin,
        hot=args.hot,
        zinger=args.zinger,
        dark=args.dark,
        bad_pixels=args.bad_pixels,
    )


def cmd_simulate(args: argparse.Namespace) -> dict[str, Any]:
    from workers.io import write_cxi
    from workers.runtime import check_output
    from workers.simulate import simulate

    for flag, value, low in (("--probe-size", args.probe_size, 8), ("--positions", args.positions, 1)):
        if value < low:
            raise UsageError(f"{flag} must be at least {low}, got {value}")
    if not args.photons > 0:
        raise UsageError(f"--photons must be positive (inf for no noise), got {args.photons}")
    if args.position_error < 0:
        raise UsageError(f"--position-error must be >= 0, got {args.position_error}")
    check_output(args.out)
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
    options = _option_pairs(args.option)
    if args.batch_size is not None:
        options["batch_size"] = args.batch_size
    job_input: FileInput | StreamInput
    if args.listen is not None:
        job_input = StreamInput(
            stream=args.listen,
            positions=args.positions_listen,
            idle_timeout_s=args.idle_timeout,
            preprocess=_preprocessing(args),
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

    from workers.runtime import Progress, run_job, schedule_name

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
        "schedule": schedule_name(job.schedule),
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
    """The result's amplitude, phase and probe as annotated PNGs beside ``out`` (``OUT_amplitude.png``, ...)."""
    from workers.images import KINDS, render_result

    stem = str(Path(out).with_suffix(""))
    paths = []
    for kind in KINDS:
        path = f"{stem}_{kind}.png"
        Path(path).write_bytes(render_result(result, kind))
        paths.append(path)
    return paths


def cmd_listen(args: argparse.Namespace) -> dict[str, Any]:
    from workers.stream.preprocess import build_preprocessor
    from workers.stream.protocol import Protocol
    from workers.stream.receiver import Receiver

    protocol = Protocol(args.protocol) if args.protocol else None
    preprocess = build_preprocessor(_preprocessing(args))
    receiver = Receiver(
        args.endpoint,
        positions=args.positions,
        preprocess=preprocess,
        protocol=protocol,
        idle_timeout_s=args.idle_timeout,
    ).start()
    try:
        while not receiver.done.is_set():
            receiver.buffer.wait(0.1)
            receiver.buffer.drain()
    finally:
        receiver.close()
    return receiver.counters()


def cmd_replay(args: argparse.Namespace) -> dict[str, Any]:
    from workers.io import load_scan
    from workers.stream.detector import Faults, replay
    from workers.stream.protocol import Protocol

    data = load_scan(args.input)
    faults = Faults(args.drop, args.duplicate, args.reorder, args.corrupt, args.fault_seed)
    report = replay(
        data,
        args.to,
        kind=Protocol(args.protocol),
        compression=None if args.compression == "none" else args.compression,
        rate_hz=args.rate,
        positions_endpoint=args.positions_to,
        position_lag=args.position_lag,
        faults=faults,
        scan_id=args.scan_id,
        batch=args.batch,
    )
    return {"file": args.input, "to": args.to, "protocol": args.protocol, **report.as_dict()}


def cmd_worker(args: argparse.Namespace) -> dict[str, Any]:
    import signal
    import threading

    from workers.job import JobSpec
    from workers.runtime import Progress, run_job

    if args.queue:
        return cmd_worker_queue(args)
    text = sys.stdin.read() if args.job in (None, "-") else Path(args.job).read_text(encoding="utf-8")
    job = JobSpec.model_validate_json(text)
    cancel = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: cancel.set())

    def report(p: Progress) -> None:
        if not args.quiet:
            line = {"iteration": p.iteration, "loss": p.loss, "frames_used": p.frames_used, "live": p.streaming}
            print(json.dumps(line), file=sys.stderr)

    result = run_job(job, on_progress=report, cancel=cancel)
    return {
        "file": job.output,
        "iterations": int(result.attrs["iterations"]),
        "stopped": bool(result.attrs["stopped"]),
        "final_loss": float(result.loss[-1]) if len(result.loss) else math.nan,
    }


def cmd_worker_queue(args: argparse.Namespace) -> dict[str, Any]:
    import signal
    import threading

    from flows.worker import serve_queue
    from service.settings import Settings

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    settings = Settings()
    serve_queue(settings, stop=stop)
    return {"queue": settings.redis_url, "stopped": True}


def cmd_serve(args: argparse.Namespace) -> dict[str, Any]:
    import signal
    import threading

    import uvicorn

    from flows.worker import serve_queue
    from service.app import create_app
    from service.demo import start_demo
    from service.redis_local import ensure_redis
    from service.settings import Settings

    settings = Settings()
    # uvicorn re-raises the SIGTERM it caught once it has shut down; with the default handler that
    # would end the process without atexit handlers, leaving Prefect's temporary server running.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    redis_process = ensure_redis(settings.redis_url, start=settings.start_redis)
    stop = threading.Event()
    worker = threading.Thread(target=serve_queue, args=(settings,), kwargs={"stop": stop}, name="worker", daemon=True)
    if not args.no_worker:
        worker.start()
    try:
        if args.demo:
            job_id = start_demo(
                settings,
                positions=args.demo_positions,
                rate_hz=args.demo_rate,
                iterations_after_scan=args.demo_iterations,
                stop=stop,
            )
            print(f"demo job {job_id}: open http://{args.host}:{args.port}/", file=sys.stderr)
        print(f"PtychoStream on http://{args.host}:{args.port}/ (API docs at /docs)", file=sys.stderr)
        uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="warning")
    finally:
        stop.set()
        if worker.is_alive():
            worker.join(timeout=60)
        if redis_process is not None:
            redis_process.terminate()
    return {"served": f"http://{args.host}:{args.port}/"}


def cmd_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from workers.io import load_scan, read_result, result_load_options
    from workers.metrics import data_metrics, truth_metrics

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
    _add_preprocess_arguments(p)
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser("evaluate", help="data and (if the file has one) ground-truth metrics of a result")
    p.add_argument("result", metavar="OUT.h5")
    p.add_argument("--truth", required=True, metavar="IN.cxi", help="the scan (simulated files carry the truth)")
    p.add_argument("--near-field", action="store_true", help="near-field geometry (default: as the result records)")
    p.add_argument("--focus-distance", type=float, help="focus-to-sample distance (m): cone-beam near field")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("listen", help="receive one scan from a stream; print frame accounting and rates")
    p.add_argument("endpoint", metavar="tcp://HOST:PORT")
    p.add_argument("--protocol", choices=PROTOCOLS, help="accept only this format (default: any)")
    p.add_argument("--positions", metavar="tcp://HOST:PORT", help="separate position stream")
    p.add_argument("--idle-timeout", type=float, help="s without data that end the scan (default: wait)")
    p.add_argument("--json", action="store_true", help="print the accounting as one JSON line")
    _add_preprocess_arguments(p)
    p.set_defaults(func=cmd_listen)

    p = sub.add_parser("replay", help="virtual detector: stream a scan file over ZeroMQ")
    p.add_argument("input", metavar="IN.cxi")
    p.add_argument("--to", required=True, metavar="tcp://HOST:PORT", help="the receiver's endpoint")
    p.add_argument("--rate", type=float, help="frames per second (default: as fast as possible)")
    p.add_argument("--protocol", choices=PROTOCOLS, default="native")
    p.add_argument("--compression", choices=["none", "lz4", "bslz4"], default="none", help="DECTRIS formats only")
    p.add_argument("--positions-to", metavar="tcp://HOST:PORT", help="send positions on a separate stream")
    p.add_argument("--position-lag", type=int, default=0, help="frames by which positions trail (<0: lead)")
    p.add_argument("--scan-id", default="1", help="scan (series) id; digits for the DECTRIS formats")
    p.add_argument("--batch", type=int, default=1, help="frames per message (native 'frames' messages; default 1)")
    for fault in ("drop", "duplicate", "reorder", "corrupt"):
        p.add_argument(f"--{fault}", type=float, default=0.0, metavar="FRACTION", help=f"fault injection: {fault}")
    p.add_argument("--fault-seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("worker", help="run one job (JSON file or stdin): a file or stream input and a schedule")
    p.add_argument("job", nargs="?", metavar="JOB.json", help="the job; '-' or absent: read it from stdin")
    p.add_argument("--queue", action="store_true", help="consume the service's Redis queue (PTYCHOSTREAM_* env)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("serve", help="API + dashboard + an in-process worker (+ a local Redis if needed)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--demo", action="store_true", help="also stream a simulated scan into a live job")
    p.add_argument("--demo-positions", type=int, default=300, help="scan positions of the demo (default 300)")
    p.add_argument("--demo-rate", type=float, default=12.0, help="demo detector frames/s (default 12)")
    p.add_argument("--demo-iterations", type=int, default=40, help="demo epochs after the scan (default 40)")
    p.add_argument(
        "--no-worker", action="store_true", help="API and dashboard only; jobs run on `ptychostream worker --queue`"
    )
    p.set_defaults(func=cmd_serve)
    return parser


def _print(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary))
        return
    for key, value in summary.items():
        print(f"{key:>22}: {value:.6g}" if isinstance(value, float) else f"{key:>22}: {value}")


def _log_warnings_as_lines() -> None:
    """Warnings of the compute packages (e.g. a geometry that looks wrong) print as one line on stderr."""
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("ptychostream: warning: %(message)s"))
    logger = logging.getLogger("workers")
    if not logger.handlers:
        logger.addHandler(handler)
        logger.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    share_cores()
    # Prefect's temporary server would phone home (and log an error where there is no network, as at many beamlines)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    _log_warnings_as_lines()
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
    return f"invalid {exc.title}: " + "; ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
