"""``ptychostream serve`` and ``worker``: the service and its workers. The only place ``service`` reaches
``flows`` (inside the command functions: the seam of ``service.flow_api``)."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.cli.common import Subparsers
from service.cli.prefect_local import PrefectStartError, TemporaryPrefect
from service.settings import Settings

if TYPE_CHECKING:
    import uvicorn


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
    """Consume the queue until a signal; without PREFECT_API_URL, with a temporary Prefect server of its own."""
    from service.cli.lifecycle import StopSignals, start_prefect

    settings = Settings()
    stop = threading.Event()
    signals = StopSignals(stop, raise_first=False)
    with signals.installed(), contextlib.ExitStack() as cleanup:
        prefect = start_prefect(settings, cleanup)
        from flows.worker import flush_prefect, serve_queue

        if prefect is not None:
            try:
                prefect.wait_ready(stop)
            except InterruptedError:
                return {"queue": settings.redis_url, "stopped": True}
            cleanup.callback(flush_prefect)
        cleanup.callback(signals.hold)
        serve_queue(settings, stop=stop)
    return {"queue": settings.redis_url, "stopped": True}


WORKER_STOP_S = 60.0  # how long serve waits for its worker to stop the running job and record its partial result
DETECTOR_STOP_S = 30.0  # how long serve waits for the demo detector (mid-simulation it is inside torch)


def cmd_serve(args: argparse.Namespace) -> dict[str, Any]:
    """The API, the dashboard, one worker thread and their parts (Redis, Prefect), stopped in order on any exit."""
    import uvicorn

    from service.app import create_app
    from service.cli import children
    from service.cli.lifecycle import StopSignals, check_port, start_prefect
    from service.demo import start_demo
    from service.redis_local import ensure_redis

    settings = Settings()
    check_port(args.host, args.port)
    stop = threading.Event()
    signals = StopSignals(stop, raise_first=True)
    with signals.installed(), contextlib.ExitStack() as cleanup:
        redis_process = ensure_redis(
            settings.redis_url, start=settings.start_redis, data_dir=settings.results_root / ".redis"
        )
        if redis_process is not None:
            cleanup.callback(children.stop, redis_process)
        prefect = None
        if not args.no_worker:
            prefect = start_prefect(settings, cleanup)
            from flows.worker import flush_prefect

            cleanup.callback(flush_prefect)
        server = uvicorn.Server(
            uvicorn.Config(create_app(settings), host=args.host, port=args.port, log_level="warning")
        )
        job_id = None
        if args.demo:  # the detector stops after the worker: the job is cancelled, not starved of frames
            detector_stop = threading.Event()
            job_id, detector = start_demo(
                settings,
                positions=args.demo_positions,
                rate_hz=args.demo_rate,
                iterations_after_scan=args.demo_iterations,
                stop=detector_stop,
            )
            cleanup.callback(detector.join, DETECTOR_STOP_S)
            cleanup.callback(detector_stop.set)
            print(f"demo job {job_id}: open http://{args.host}:{args.port}/", file=sys.stderr)
        failures: list[Exception] = []
        if not args.no_worker:
            worker = threading.Thread(
                target=run_worker,
                args=(settings, prefect, stop),
                kwargs={"demo_job": job_id, "failures": failures, "server": server},
                name="worker",
                daemon=True,
            )
            worker.start()
            cleanup.callback(worker.join, WORKER_STOP_S)
        cleanup.callback(stop.set)  # before the join above: the worker stops its job, the detector its replay
        cleanup.callback(signals.hold)
        print(f"PtychoStream on http://{args.host}:{args.port}/ (API docs at /docs)", file=sys.stderr)
        server.run()
        if failures:
            raise failures[0]
    return {"served": f"http://{args.host}:{args.port}/"}


def run_worker(
    settings: Settings,
    prefect: TemporaryPrefect | None,
    stop: threading.Event,
    *,
    demo_job: str | None,
    failures: list[Exception],
    server: uvicorn.Server,
) -> None:
    """``serve``'s worker thread: wait for the temporary Prefect server (the demo job's log says so), then run the
    queue until ``stop``. If Prefect does not start, fail the demo job with the cause and stop the server."""
    from flows.worker import serve_queue
    from service.store import JobState, JobStore, TransitionError

    store = JobStore.connect(settings.redis_url, settings.key_prefix)
    if prefect is not None:
        if demo_job is not None:
            store.log(
                demo_job, f"waiting for Prefect's temporary server (up to {settings.prefect_start_timeout_s:g} s)"
            )
        try:
            waited = prefect.wait_ready(stop)
        except InterruptedError:
            return
        except PrefectStartError as exc:
            failures.append(exc)
            if demo_job is not None:
                with contextlib.suppress(TransitionError):
                    store.transition(demo_job, to=JobState.FAILED, message=str(exc))
            server.should_exit = True
            return
        if demo_job is not None:
            store.log(demo_job, f"Prefect's temporary server answered after {waited:.1f} s")
    serve_queue(settings, stop=stop)


def register(sub: Subparsers) -> None:
    """Add the ``worker`` and ``serve`` commands."""
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
