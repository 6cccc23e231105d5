"""Service load benchmark (run by hand): N concurrent status/preview clients while a job runs.

    .venv/bin/python tests/benchmarks/bench_service.py [--clients 200] [--seconds 15] [--append]

Starts ``ptychostream serve`` (API + in-process worker, one process) on a free port with its own
Redis key prefix, submits an ePIE job on a simulated scan (probe 64 px, 200 positions), then
measures the job's iteration rate for ``--seconds`` without clients and for ``--seconds`` with
``--clients`` concurrent clients, each alternating GET /api/jobs/{id} and GET .../preview/amplitude.png:
paced (each client one request per second, as a dashboard polls) and saturating (each client's
next request as soon as the last returns). Reports request latency percentiles and the
iteration-rate ratio (with / without clients) of each.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np

from service.demo import free_port
from workers.io import write_cxi
from workers.simulate import simulate

TOKEN = "bench-token-0123456789"


def iteration_at(client: httpx.Client, job_id: str) -> tuple[float, int]:
    return time.perf_counter(), int(client.get(f"/api/jobs/{job_id}").json()["progress"]["iteration"])


def rate_over(client: httpx.Client, job_id: str, seconds: float) -> float:
    t0, i0 = iteration_at(client, job_id)
    time.sleep(seconds)
    t1, i1 = iteration_at(client, job_id)
    return (i1 - i0) / (t1 - t0)


async def load(base: str, job_id: str, clients: int, seconds: float, interval: float) -> tuple[list[float], int]:
    """``clients`` concurrent loops of status + preview requests, each sending one request per ``interval`` s
    (0: the next as soon as the last returns); returns every request's latency (s) and the non-200 count."""
    latencies: list[float] = []
    errors = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:

        async def one(k: int) -> None:
            nonlocal errors
            paths = [f"/api/jobs/{job_id}", f"/api/jobs/{job_id}/preview/amplitude.png"]
            n = k
            due = t0 + interval * k / clients
            while time.perf_counter() < deadline:
                if interval:
                    await asyncio.sleep(max(due - time.perf_counter(), 0))
                    due += interval
                start = time.perf_counter()
                r = await client.get(paths[n % 2])
                latencies.append(time.perf_counter() - start)
                errors += r.status_code != 200
                n += 1

        await asyncio.gather(*(one(k) for k in range(clients)))
    return latencies, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--append", action="store_true", help="append the report to tests/benchmarks/RESULTS.md")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-service-"))
    (work / "data").mkdir()
    data = simulate(probe_size=64, n_positions=200, overlap=0.7, photons=1e6, seed=5)
    write_cxi(work / "data" / "scan.cxi", data, data.truth)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "PTYCHOSTREAM_REDIS_URL": "redis://127.0.0.1:6379/8",
        "PTYCHOSTREAM_KEY_PREFIX": f"bench:{uuid.uuid4().hex[:8]}:",
        "PTYCHOSTREAM_API_TOKEN": TOKEN,
        "PTYCHOSTREAM_DATA_ROOT": str(work / "data"),
        "PTYCHOSTREAM_RESULTS_ROOT": str(work / "results"),
        "PREFECT_HOME": str(work / "prefect"),
    }
    server = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port)], env=env)
    try:
        client = httpx.Client(base_url=base, timeout=30)
        for _ in range(600):
            try:
                if client.get("/api/health").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        body = {"input": {"file": "scan.cxi"}, "schedule": [{"engine": "epie", "iterations": 100_000}], "device": "cpu"}
        auth = {"Authorization": f"Bearer {TOKEN}"}
        job_id = client.post("/api/jobs", json=body, headers=auth).json()["id"]
        while client.get(f"/api/jobs/{job_id}").json()["progress"]["iteration"] < 3:
            time.sleep(0.2)
        rows = []
        for name, interval in (("paced, 1 request/s each", 1.0), ("saturating, back to back", 0.0)):
            quiet = rate_over(client, job_id, args.seconds)
            t0, i0 = iteration_at(client, job_id)
            latencies, errors = asyncio.run(load(base, job_id, args.clients, args.seconds, interval))
            t1, i1 = iteration_at(client, job_id)
            loaded = (i1 - i0) / (t1 - t0)
            p50, p95, p99 = np.percentile(latencies, [50, 95, 99]) * 1000
            cells = [name, len(latencies), errors, f"{len(latencies) / args.seconds:.0f}", f"{p50:.1f}", f"{p95:.1f}"]
            cells += [f"{p99:.1f}", f"{quiet:.2f}", f"{loaded:.2f}", f"{loaded / quiet:.2f}"]
            rows.append("| " + " | ".join(str(c) for c in cells) + " |")
        client.post(f"/api/jobs/{job_id}/cancel", headers=auth)
    finally:
        server.terminate()
        server.wait(timeout=60)
    lines = [
        f"{args.clients} clients (status and amplitude preview, alternating) for {args.seconds:g} s per row against"
        " `ptychostream serve` (API and worker in one process), ePIE on 200 frames of 64 px, CPU; the clients run"
        " in the benchmark process on the same machine. it/s without clients is measured just before each row.",
        "",
        "| clients | requests | non-200 | req/s | p50 (ms) | p95 (ms) | p99 (ms) | it/s without | it/s with | ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
        *rows,
    ]
    report = "\n".join(lines)
    print(report)
    if args.append:
        command = (
            f".venv/bin/python tests/benchmarks/bench_service.py --clients {args.clients} --seconds {args.seconds:g}"
        )
        results = Path(__file__).with_name("RESULTS.md")
        with results.open("a", encoding="utf-8") as f:
            f.write(f"\n## Service (issue 4)\n\n```sh\n{command}\n```\n\n{report}\n")


if __name__ == "__main__":
    main()
