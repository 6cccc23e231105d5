"""Issue 15's startup figure: the README's first command shows a live reconstruction within 60 s, every time.

Starts ``.venv/bin/ptychostream serve --demo`` (the README's first command, on a free port) N times in a row in
one scratch folder (its ``data/``, ``results/`` and Prefect database kept between starts, as for a user who
restarts it; ``--fresh`` uses a new folder each time, as a fresh clone), and for each start measures the seconds
until the demo job's amplitude preview is served by the API (``GET /api/jobs/ID/preview/amplitude.png``, 200),
then ends it as a terminal's Ctrl-C does (SIGINT to its process group) and checks the exit status, stderr and
that no child process survives.

    .venv/bin/python tests/benchmarks/bench_startup.py [--starts 10] [--fresh] [--own-redis]

``--own-redis`` points it at a free port so that ``serve`` starts its own redis-server (a machine without one).
Prints one row per start and a summary line; exits 1 if any start missed the goal or left a process behind.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from service.demo import free_port  # noqa: E402
from tests.service.test_startup import alive, children_of  # noqa: E402

GOAL_S = 60.0
GIVE_UP_S = 180.0
COMMAND = ROOT / ".venv" / "bin" / "ptychostream"


@dataclass
class Start:
    """One start: seconds to the first frame used and to the first preview, and how it ended."""

    frames_s: float | None
    preview_s: float | None
    stop_s: float
    code: int
    traceback: bool
    orphans: int


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except (urllib.error.URLError, OSError):
        return 0, b""


def one_start(folder: Path, env: dict[str, str]) -> Start:
    """Run one ``serve --demo`` in ``folder`` until its first preview (or ``GIVE_UP_S``), then Ctrl-C it."""
    port = free_port()
    err_path = folder / f"serve-{port}.err"
    started = time.monotonic()
    with err_path.open("wb") as err:
        process = subprocess.Popen(
            [str(COMMAND), "serve", "--demo", "--port", str(port)],
            cwd=folder,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    base, job_id = f"http://127.0.0.1:{port}/api/jobs", None
    frames_s = preview_s = None
    kids: set[int] = set()
    while time.monotonic() - started < GIVE_UP_S and process.poll() is None:
        kids |= children_of(process.pid)
        if job_id is None and (found := re.search(r"demo job ([0-9a-f]+)", err_path.read_text(errors="replace"))):
            job_id = found.group(1)
        if job_id is not None:
            status, body = get(f"{base}/{job_id}")
            if frames_s is None and status == 200 and b'"frames_used":0,' not in body:
                frames_s = time.monotonic() - started
            status, body = get(f"{base}/{job_id}/preview/amplitude.png")
            if status == 200 and body.startswith(b"\x89PNG"):
                preview_s = time.monotonic() - started
                break
        time.sleep(0.25)
    kids |= children_of(process.pid)
    signalled = time.monotonic()
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)
    try:
        code = process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        code = process.wait()
    stop_s = time.monotonic() - signalled
    time.sleep(0.5)
    stderr = err_path.read_text(errors="replace")
    return Start(frames_s, preview_s, stop_s, code, "Traceback" in stderr, sum(alive(pid) for pid in kids))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=10)
    parser.add_argument("--fresh", action="store_true", help="a new folder for every start (a fresh clone)")
    parser.add_argument("--own-redis", action="store_true", help="serve starts its own redis-server")
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PTYCHOSTREAM_", "PREFECT_"))}
    if args.own_redis:
        env["PTYCHOSTREAM_REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    scratch = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    print(f"{'start':>5} {'frames s':>9} {'preview s':>10} {'stop s':>7} {'exit':>5} {'traceback':>9} {'orphans':>7}")
    results: list[Start] = []
    for n in range(1, args.starts + 1):
        folder = scratch / (f"start-{n}" if args.fresh else "instance")
        folder.mkdir(exist_ok=True)
        r = one_start(folder, env)
        results.append(r)
        show = [f"{x:.1f}" if x is not None else "none" for x in (r.frames_s, r.preview_s)]
        print(f"{n:>5} {show[0]:>9} {show[1]:>10} {r.stop_s:>7.1f} {r.code:>5} {r.traceback!s:>9} {r.orphans:>7}")
    previews = sorted(r.preview_s for r in results if r.preview_s is not None)
    ok = [r for r in results if r.preview_s is not None and r.preview_s <= GOAL_S and not r.orphans]
    ok = [r for r in ok if r.code == 128 + signal.SIGINT and not r.traceback]
    if previews:
        print(f"preview: median {previews[len(previews) // 2]:.1f} s, max {previews[-1]:.1f} s", end="; ")
    print(f"{len(ok)}/{len(results)} starts met the goal ({GOAL_S:g} s, clean Ctrl-C, no orphans); folder {scratch}")
    return 0 if len(ok) == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
