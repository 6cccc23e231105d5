"""Issue 12's HTTP measurements, by hand, against a real ``uvicorn --factory service.app:create_app`` process
(httptools, uvloop) and the Redis at 127.0.0.1:6379 (DB 9, a fresh key prefix):

  python -m tests.benchmarks.bench_abuse body           # 200 MiB chunked POST without / with the token: RSS
  python -m tests.benchmarks.bench_abuse events         # 500 event streams with the token, 100 without
  python -m tests.benchmarks.bench_abuse schemathesis   # every check, 50 examples per operation (pytest -s)

Each prints a table (markdown) of what it measured. ``BENCH_SERVICE_ROOT=<dir>`` serves another checkout
(e.g. ``git archive <commit> service workers flows | tar -x -C <dir>``) for a before/after comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from service.demo import free_port
from service.jobspec import spec_for
from service.settings import Settings
from service.store import JobState, JobStore
from tests.service.test_limits import send_chunked
from workers.job import JobRequest, StreamInput

ROOT = Path(__file__).resolve().parents[2]
SERVICE_ROOT = Path(os.environ.get("BENCH_SERVICE_ROOT", ROOT))  # another checkout's service: a before/after run
REDIS_URL = "redis://127.0.0.1:6379/9"
TOKEN = secrets.token_urlsafe(32)
MIB = 1024 * 1024


@contextmanager
def server(**env: str) -> Iterator[tuple[str, int, Settings]]:
    """The API in its own process; yields its URL, pid and the settings it runs with."""
    port, tmp = free_port(), Path(tempfile.mkdtemp())
    (tmp / "data").mkdir()
    values = {
        "PTYCHOSTREAM_REDIS_URL": REDIS_URL,
        "PTYCHOSTREAM_KEY_PREFIX": f"bench:{uuid.uuid4().hex[:8]}:",
        "PTYCHOSTREAM_API_TOKEN": TOKEN,
        "PTYCHOSTREAM_DATA_ROOT": str(tmp / "data"),
        "PTYCHOSTREAM_RESULTS_ROOT": str(tmp / "results"),
        "PTYCHOSTREAM_START_REDIS": "false",
        **env,
    }
    argv = [sys.executable, "-m", "uvicorn", "--factory", "service.app:create_app", "--no-access-log"]
    argv += ["--port", str(port)]
    process = subprocess.Popen(argv, env={**os.environ, **values}, cwd=SERVICE_ROOT, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(url + "/metrics", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.2)
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    settings = Settings()
    for k, v in saved.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    try:
        yield url, process.pid, settings
    finally:
        process.terminate()
        process.wait(timeout=30)


def memory_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM: the peak RSS) of ``pid`` in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def bench_body(mib: int) -> None:
    print(f"| body ({mib} MiB chunked) | sent before refusal | reply | RSS before -> after (MiB) | peak growth (MiB) |")
    print("|---|---|---|---|---|")
    for label, headers in (("no token", {}), ("API token", {"Authorization": f"Bearer {TOKEN}"})):
        with server() as (url, pid, _):
            httpx.get(url + "/api/jobs", timeout=5)  # warm up
            rss0, hwm0 = memory_mib(pid)
            sent_bytes, status = send_chunked(url, headers, mib)
            sent = sent_bytes / MIB
            time.sleep(0.5)
            rss1, hwm1 = memory_mib(pid)
            print(f"| {label} | {sent:.1f} MiB | {status} | {rss0:.0f} -> {rss1:.0f} | {max(hwm1 - hwm0, 0):.1f} |")


async def open_streams(
    url: str, jobs: list[str], n: int, headers: dict[str, str], then: Callable[[], None] = lambda: None
) -> tuple[list[list[str]], int, float]:
    """``n`` streams over ``jobs``; once all have their first event (or 60 s passed), ``then()``; returns each
    stream's event names (``HTTP <status>`` if refused), how many were open at once and the seconds from
    ``then`` to the last final state received."""
    started: list[str] = []
    ended: list[float] = []

    async def follow(client: httpx.AsyncClient, job_id: str) -> list[str]:
        names: list[str] = []
        async with client.stream("GET", f"/api/jobs/{job_id}/events", headers=headers) as reply:
            if reply.status_code != 200:
                return [f"HTTP {reply.status_code}"]
            async for line in reply.aiter_lines():
                if line.startswith("event:"):
                    names.append(line.split(":", 1)[1].strip())
                    if len(names) == 1:
                        started.append(job_id)
                    elif names[-1] == "state":
                        ended.append(time.perf_counter())
        return names

    limits = httpx.Limits(max_connections=n + 10)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        tasks = [asyncio.create_task(follow(client, jobs[i % len(jobs)])) for i in range(n)]
        deadline = time.monotonic() + 60
        while len(started) < n and time.monotonic() < deadline and not all(t.done() for t in tasks):
            await asyncio.sleep(0.1)
        opened = len(started)
        start = time.perf_counter()
        then()
        names = await asyncio.gather(*tasks)
        return names, opened, max(ended, default=start) - start


def bench_events(n: int, jobs_n: int) -> None:
    with server(PTYCHOSTREAM_READ_ACCESS="token") as (url, _, settings):
        store = JobStore.connect(settings.redis_url, settings.key_prefix)
        jobs = []
        for _ in range(jobs_n):
            job_id = JobStore.new_id()
            request = JobRequest(input=StreamInput(stream="tcp://127.0.0.1:5599"))
            jobs.append(store.create(spec=spec_for(request, settings, job_id), job_id=job_id))

        def finish_jobs() -> None:
            for job_id in jobs:
                store.progress(job_id, {"iteration": 1}, loss=0.5)
                store.transition(job_id, to=JobState.CANCELLED, message="bench")

        strangers, _, _ = asyncio.run(open_streams(url, jobs, 100, {}))
        auth = {"Authorization": f"Bearer {TOKEN}"}
        followers, opened, seconds = asyncio.run(open_streams(url, jobs, n, auth, finish_jobs))
        complete = sum(names == ["state", "progress", "state"] for names in followers)
        refused = sum(names == ["HTTP 401"] for names in strangers)
        print("| event streams | open at once | got state, progress, final state | s to the last final state |")
        print("|---|---|---|---|")
        print(f"| {n} with the token ({jobs_n} jobs) | {opened} | {complete} | {seconds:.2f} |")
        print(f"| 100 without a token | 0 | refused (401): {refused} | - |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["body", "events", "schemathesis"])
    parser.add_argument("--mib", type=int, default=200)
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--examples", type=int, default=50)
    args = parser.parse_args()
    if args.what == "body":
        bench_body(args.mib)
    elif args.what == "events":
        bench_events(args.streams, args.jobs)
    else:
        env = {**os.environ, "PTYCHOSTREAM_SCHEMATHESIS_EXAMPLES": str(args.examples)}
        test = "tests/service/test_schemathesis.py"
        sys.exit(subprocess.call([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", test], env=env))


if __name__ == "__main__":
    main()
