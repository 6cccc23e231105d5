"""``ptychostream serve`` and ``worker``: the service and its workers. The only place ``service`` reaches
``flows`` (inside the command functions: the seam of ``service.flow_api``)."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from service.cli.common import Subparsers


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
    redis_process = ensure_redis(
        settings.redis_url, start=settings.start_redis, data_dir=settings.results_root / ".redis"
    )
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
