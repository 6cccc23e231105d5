"""Issue 12's fault measurements, by hand, against a real ``ptychostream serve`` process (API + in-process queue
worker + Prefect) on a private redis-server (append-only file) that is killed -9 and restarted:

  python -m tests.benchmarks.bench_faults outage   # Redis down 3 s and 30 s, idle and mid-job
  python -m tests.benchmarks.bench_faults cancel   # 1,000 submit-then-cancel pairs

Each prints a markdown table. ``BENCH_SERVICE_ROOT=<dir>`` runs another checkout's service (before/after).
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import httpx

from tests.service.redis_server import RedisServer, free_port
from workers.io import write_cxi
from workers.simulate import simulate

ROOT = Path(__file__).resolve().parents[2]
SERVICE_ROOT = Path(os.environ.get("BENCH_SERVICE_ROOT", ROOT))
TOKEN = secrets.token_urlsafe(32)
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LEASE_S = 10.0  # the service's default


@dataclass
class Service:
    url: str
    redis: RedisServer
    results: Path
    process: subprocess.Popen[bytes]
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def health(self) -> int:
        try:
            return self.client.get("/api/health").status_code
        except httpx.HTTPError:
            return -1

    def submit(self, iterations: int) -> str:
        body = {"input": {"file": "scan.cxi"}, "schedule": [{"engine": "epie", "iterations": iterations}]}
        reply = self.client.post("/api/jobs", json=body, headers=AUTH)
        assert reply.status_code == 201, reply.text
        return str(reply.json()["id"])

    def job(self, job_id: str) -> dict[str, object]:
        reply: dict[str, object] = self.client.get(f"/api/jobs/{job_id}").json()
        return reply

    def wait(self, job_id: str, states: tuple[str, ...], timeout_s: float) -> dict[str, object]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                job = self.job(job_id)
                if job["state"] in states:
                    return job
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.2)
        raise TimeoutError(f"job {job_id} not in {states} after {timeout_s} s")


@contextmanager
def service() -> Iterator[Service]:
    tmp = Path(tempfile.mkdtemp())
    (tmp / "data").mkdir()
    (tmp / "redis").mkdir()
    data = simulate(probe_size=32, n_positions=64, overlap=0.75, photons=1e6, seed=3)
    write_cxi(tmp / "data" / "scan.cxi", data, data.truth)
    redis = RedisServer(tmp / "redis")
    redis.start()
    port = free_port()
    env = {
        "PTYCHOSTREAM_REDIS_URL": redis.url,
        "PTYCHOSTREAM_API_TOKEN": TOKEN,
        "PTYCHOSTREAM_DATA_ROOT": str(tmp / "data"),
        "PTYCHOSTREAM_RESULTS_ROOT": str(tmp / "results"),
        "PTYCHOSTREAM_START_REDIS": "false",
        "PTYCHOSTREAM_LEASE_S": str(LEASE_S),
    }
    argv = [sys.executable, "-m", "service.cli", "serve", "--port", str(port)]
    log = open(tmp / "serve.log", "wb")  # noqa: SIM115 - open for the process's lifetime
    process = subprocess.Popen(argv, env={**os.environ, **env}, cwd=SERVICE_ROOT, stdout=log, stderr=log)
    svc = Service(f"http://127.0.0.1:{port}", redis, tmp / "results", process)
    try:
        deadline = time.monotonic() + 120
        while svc.health() != 200:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"serve did not become healthy; see {tmp / 'serve.log'}")
            time.sleep(0.5)
        yield svc
    finally:
        process.terminate()
        process.wait(timeout=60)
        redis.kill()
        print(f"(serve log: {tmp / 'serve.log'})", file=sys.stderr)


def outage_with_health(svc: Service, seconds: float) -> tuple[int, int]:
    """Kill Redis for ``seconds`` while polling health; (polls answered 200, polls in all) during the outage."""
    codes: list[int] = []
    svc.redis.kill()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        codes.append(svc.health())
        time.sleep(0.2)
    svc.redis.start()
    return sum(c == 200 for c in codes), len(codes)


def bench_outage() -> None:
    rows = []
    with service() as svc:
        epoch_s = time_epochs(svc)
        for seconds in (3.0, 30.0):
            ok, polls = outage_with_health(svc, seconds)
            t0 = time.monotonic()
            job_id = svc.submit(5)
            job = svc.wait(job_id, ("succeeded", "failed", "cancelled"), 300)
            rows.append(("idle", seconds, ok, polls, job["state"], time.monotonic() - t0, str(job["message"])[:60]))
            iterations = int((seconds + 20) / epoch_s)  # the job outlasts the outage by ~20 s
            job_id = svc.submit(iterations)
            svc.wait(job_id, ("running",), 60)
            time.sleep(3)
            ok, polls = outage_with_health(svc, seconds)
            t0 = time.monotonic()
            job = svc.wait(job_id, ("succeeded", "failed", "cancelled"), 600)
            rows.append(("mid-job", seconds, ok, polls, job["state"], time.monotonic() - t0, str(job["message"])[:60]))
    print("| Redis down | for (s) | health 200 while down | final state | s after Redis returned | message |")
    print("|---|---|---|---|---|---|")
    for when, seconds, ok, polls, state, after, message in rows:
        print(f"| {when} | {seconds:.0f} | {ok}/{polls} | {state} | {after:.1f} | {message} |")


def time_epochs(svc: Service) -> float:
    """Seconds per epie epoch of the benchmark's scan on this machine (a 40-epoch job)."""
    job_id = svc.submit(40)
    job = svc.wait(job_id, ("succeeded",), 300)
    progress = job["progress"]
    assert isinstance(progress, dict)
    return float(progress["elapsed_s"]) / 40


def bench_cancel(pairs: int) -> None:
    with service() as svc:
        ids: list[str] = []
        replies: Counter[str] = Counter()
        rng = random.Random(0)

        def cancel(job_id: str) -> None:
            reply = svc.client.post(f"/api/jobs/{job_id}/cancel", headers=AUTH)
            body = reply.json()
            replies[f"{reply.status_code} {body.get('previous_state') or body['detail'].split(' is ')[-1]}"] += 1

        with ThreadPoolExecutor(8) as pool:
            for _ in range(pairs):  # one job per half second, each cancelled 0-1.5 s later: claims and cancels race
                job_id = svc.submit(3)
                ids.append(job_id)
                delay = rng.uniform(0, 1.5)
                pool.submit(lambda j=job_id, d=delay: (time.sleep(d), cancel(j)))
                time.sleep(0.5)
        outcomes: Counter[str] = Counter()
        disagreements = []
        for job_id in ids:
            job = svc.wait(job_id, ("succeeded", "failed", "cancelled"), 600)
            lines = svc.client.get(f"/api/jobs/{job_id}/logs").json()["lines"]
            taken = any("claimed by" in line for line in lines)
            result = svc.results / job_id / "result.h5"
            did = "never ran"
            if taken and result.is_file():
                with h5py.File(result) as f:
                    did = "stopped" if f.attrs.get("stopped") else "ran to the end"
            elif taken:
                did = "ran, no result"
            expected = {"never ran": "cancelled", "stopped": "cancelled", "ran to the end": "succeeded"}.get(did)
            outcomes[f"{did} -> {job['state']}"] += 1
            if job["state"] != expected:
                disagreements.append((job_id, did, job["state"], job["message"]))
    print(f"{pairs} submit-then-cancel pairs; cancel replies: {dict(replies)}")
    print("| what the worker did -> final state | jobs |")
    print("|---|---|")
    for outcome, n in sorted(outcomes.items()):
        print(f"| {outcome} | {n} |")
    print(f"disagreements: {len(disagreements)}")
    for row in disagreements[:10]:
        print("  ", row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("outage", "cancel"))
    parser.add_argument("--pairs", type=int, default=1000)
    args = parser.parse_args()
    threading.current_thread().name = "bench"
    bench_outage() if args.what == "outage" else bench_cancel(args.pairs)


if __name__ == "__main__":
    main()
