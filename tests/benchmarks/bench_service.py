"""Service load benchmark (run by hand): N concurrent status/preview clients while a job runs.

    .venv/bin/python tests/benchmarks/bench_service.py [--clients 200] [--seconds 10]

Starts ``ptychostream serve`` on a free port with its own Redis key prefix, once with its
in-process worker and once API-only with a separate ``ptychostream worker --queue`` process,
submits an ePIE job on a simulated scan (probe 64 px, 200 positions), then measures the
job's iteration rate for ``--seconds`` without clients and for ``--seconds`` with
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
import uvloop

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


async def http_get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> int:
    """One keep-alive HTTP/1.1 GET on an open connection; returns the status (the body is read and dropped).

    A bare client, so that the load generator (on the same cores as the server) costs little next to
    the server: httpx spends milliseconds of CPU per request here, more than the server does."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(h[15:]) for h in head.split(b"\r\n") if h[:15].lower() == b"content-length:"), 0)
    await reader.readexactly(length)
    return int(head[9:12])


async def load(port: int, job_id: str, clients: int, seconds: float, interval: float) -> tuple[list[float], int]:
    """``clients`` concurrent connections alternating status and preview requests, each sending one request per
    ``interval`` s (0: the next as soon as the last returns); returns every latency (s) and the non-200 count."""
    latencies: list[float] = []
    errors = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    paths = [f"/api/jobs/{job_id}", f"/api/jobs/{job_id}/preview/amplitude.png"]

    async def one(k: int) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        n, due = k, t0 + interval * k / clients
        while time.perf_counter() < deadline:
            if interval:
                await asyncio.sleep(max(due - time.perf_counter(), 0))
                due += interval
            start = time.perf_counter()
            status = await http_get(reader, writer, paths[n % 2])
            latencies.append(time.perf_counter() - start)
            errors += status != 200
            n += 1
        writer.close()

    await asyncio.gather(*(one(k) for k in range(clients)))
    return latencies, errors


def measure(work: Path, separate: bool, clients: int, seconds: float) -> list[str]:
    """Start the service (``separate``: API only, plus a ``worker --queue`` process), run a job, load it."""
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
    serve = [sys.executable, "-m", "service.cli", "serve", "--port", str(port), *(["--no-worker"] if separate else [])]
    processes = [subprocess.Popen(serve, env=env)]
    if separate:
        processes.append(subprocess.Popen([sys.executable, "-m", "service.cli", "worker", "--queue"], env=env))
    layout = "API + separate worker process" if separate else "API + in-process worker"
    rows = []
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
        for name, interval in (("paced, 1 request/s each", 1.0), ("saturating, back to back", 0.0)):
            quiet = rate_over(client, job_id, seconds)
            t0, i0 = iteration_at(client, job_id)
            latencies, errors = uvloop.run(load(port, job_id, clients, seconds, interval))
            t1, i1 = iteration_at(client, job_id)
            loaded = (i1 - i0) / (t1 - t0)
            p50, p95, p99 = np.percentile(latencies, [50, 95, 99]) * 1000
            cells = [layout, name, len(latencies), errors, f"{len(latencies) / seconds:.0f}", f"{p50:.1f}"]
            cells += [f"{p95:.1f}", f"{p99:.1f}", f"{quiet:.2f}", f"{loaded:.2f}", f"{loaded / quiet:.2f}"]
            rows.append("| " + " | ".join(str(c) for c in cells) + " |")
        client.post(f"/api/jobs/{job_id}/cancel", headers=auth)
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait(timeout=90)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-service-"))
    (work / "data").mkdir()
    data = simulate(probe_size=64, n_positions=200, overlap=0.7, photons=1e6, seed=5)
    write_cxi(work / "data" / "scan.cxi", data, data.truth)
    rows = [row for separate in (False, True) for row in measure(work, separate, args.clients, args.seconds)]
    print(
        f"{args.clients} clients (status and amplitude preview, alternating) for {args.seconds:g} s per row, ePIE on"
        " 200 frames of 64 px, CPU; the clients run in the benchmark process on the same machine; it/s without"
        " clients is measured just before each row.\n"
    )
    columns = ["layout", "clients", "requests", "non-200", "req/s", "p50 (ms)", "p95 (ms)", "p99 (ms)"]
    print("| " + " | ".join([*columns, "it/s without", "it/s with", "ratio"]) + " |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
