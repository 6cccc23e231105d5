"""Stream benchmark through the command line (run by hand): end-to-end ingest, and the receiver's memory under
hostile streams.

    .venv/bin/python tests/benchmarks/bench_stream_cli.py [--frames 20000] [--repeats 5] [--batch 1] [--before DIR]

Ingest: a CXI file of ``--frames`` frames of 128x128 uint16 (Poisson counts) is replayed by
``ptychostream replay`` (native, as fast as it can) into ``ptychostream listen`` (its own
process, draining what arrives), both on this machine over loopback TCP. The rate is the
listener's (first to last frame received); zero loss means every frame received, none
rejected, missing or duplicated. Runs are repeated and the median reported, in one run of
this script; with ``--before DIR`` (a checkout of an earlier commit, e.g. ``git archive REV | tar
-x -C DIR``) its CLI runs too, alternating with this one's, for a before/after comparison.
Hostile: ``listen`` (default limits) is sent (a) a SIMPLON stream v2 start for 128x128 uint16
frames and one bitshuffle-LZ4 frame that declares 16384x16384 uint16 (512 MiB inflated, 3 MB on
the wire), (b) a SIMPLON v1 start and 6,000 frames without positions on the one socket, (c) the
start and end alone (the baseline); its peak RSS (``ru_maxrss`` of the process) and its
frame accounting are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zmq

from workers.data import Geometry, ScanData
from workers.io import write_cxi
from workers.stream.formats import dectris_v1, dectris_v2
from workers.stream.protocol import Part, ScanStart

CLI = [sys.executable, "-m", "service.cli"]
SIZE = 128
HERE = Path(__file__).resolve().parents[2]


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def scan_file(folder: Path, n: int) -> Path:
    """A far-field scan of ``n`` Poisson frames (128x128, counts that fit uint16) on a raster."""
    rng = np.random.default_rng(0)
    pool = rng.poisson(rng.uniform(0.5, 20, (64, SIZE, SIZE))).astype(np.float32)
    frames = pool[np.arange(n) % len(pool)]
    side = int(np.ceil(np.sqrt(n)))
    positions = np.stack(np.divmod(np.arange(n), side), axis=1).astype(np.float64) * 8.0
    geometry = Geometry("far", 1.55e-10, 2.0, 1.55e-10 * 2.0 / (SIZE * 75e-6))
    path = folder / "scan.cxi"
    write_cxi(path, ScanData(frames, positions, geometry))
    return path


def listen(endpoint: str, idle_s: float, tree: Path = HERE) -> subprocess.Popen[str]:
    argv = [*CLI, "listen", endpoint, "--json", "--idle-timeout", str(idle_s)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=tree, env=with_path(tree))


def with_path(tree: Path) -> dict[str, str]:
    """The environment that makes ``python -m service.cli`` the one of ``tree``."""
    return os.environ | {"PYTHONPATH": str(tree)}


def peak_rss_mib(pid: int) -> float:
    """The peak resident memory of a running process so far (``VmHWM``), 0 once it has gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return 0.0


def finish(proc: subprocess.Popen[str]) -> tuple[dict, float]:
    """The listener's counters and its peak RSS (MiB, read until it exits: ``ru_maxrss`` would include the
    memory of this process at the fork)."""
    peak = 0.0
    while proc.poll() is None:
        peak = max(peak, peak_rss_mib(proc.pid))
        time.sleep(0.02)
    out = proc.communicate()[0]
    if proc.returncode != 0:
        raise RuntimeError(f"listen exited with {proc.returncode}: {out[-500:]}")
    return json.loads(out), peak


def ingest(path: Path, n: int, batch: int, tree: Path = HERE) -> dict[str, float]:
    endpoint = free_endpoint()
    receiver = listen(endpoint, 120, tree)  # the sender reads the file first
    time.sleep(1.0)  # the listener binds (the sender would wait for it anyway: PUSH queues until connected)
    sent = subprocess.run(
        [*CLI, "replay", str(path), "--to", endpoint, "--batch", str(batch), "--json"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tree,
        env=with_path(tree),
    )
    c, _ = finish(receiver)
    report = json.loads(sent.stdout)
    lossless = c["received"] == n and not c["frames_rejected"] and not c["missing"] and not c["duplicates"]
    return {"fps": c["frames_per_s"], "sender_fps": report["frames_per_s"], "lossless": lossless}


def send(endpoint: str, messages: list[list[Part]]) -> None:
    context = zmq.Context()
    sock = context.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 10000)
    sock.connect(endpoint)
    for parts in messages:
        sock.send_multipart(parts, copy=False)
    sock.close()
    context.term()


def hostile(case: str) -> tuple[dict, float]:
    start = ScanStart("5", (SIZE, SIZE), "uint16", 8000.0, 2.0, 75e-6, "far", None)
    frame = np.random.default_rng(0).poisson(5, (SIZE, SIZE)).astype(np.uint16)
    if case == "bomb":
        bomb = dectris_v2.encode_frame("5", 0, np.zeros((16384, 16384), np.uint16), np.zeros(3), "bslz4")
        messages = [dectris_v2.encode_start(start), bomb, dectris_v2.encode_end("5")]
    elif case == "no positions":
        frames = [dectris_v1.encode_frame("5", i, frame, None, None) for i in range(6000)]
        messages = [dectris_v1.encode_start(start), *frames, dectris_v1.encode_end("5")]
    else:
        messages = [dectris_v1.encode_start(start), dectris_v1.encode_end("5")]
    endpoint = free_endpoint()
    receiver = listen(endpoint, 5)
    send(endpoint, messages)
    return finish(receiver)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1, help="frames per native message (replay --batch)")
    parser.add_argument("--before", type=Path, help="a checkout of an earlier commit: its CLI runs too, alternating")
    parser.add_argument("--skip-hostile", action="store_true")
    args = parser.parse_args()
    trees = {"this tree": HERE} | ({"before": args.before.resolve()} if args.before else {})
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    with tempfile.TemporaryDirectory() as tmp:
        path = scan_file(Path(tmp), args.frames)
        for k in range(args.repeats):
            for name in list(trees)[:: 1 if k % 2 == 0 else -1]:
                runs[name].append(ingest(path, args.frames, args.batch, trees[name]))
    print(f"ingest: replay -> listen, {args.frames} frames of 128x128 uint16, native, {args.batch} frame(s)/message")
    print("| tree | frames/s received (median) | runs | sender frames/s (median) | zero loss |")
    print("|---|---|---|---|---|")
    for name, done in runs.items():
        fps, sender = [r["fps"] for r in done], [r["sender_fps"] for r in done]
        spread = " / ".join(f"{f:.0f}" for f in fps)
        lossless = all(r["lossless"] for r in done)
        print(f"| {name} | {statistics.median(fps):.0f} | {spread} | {statistics.median(sender):.0f} | {lossless} |")
    if args.skip_hostile:
        return
    print("\nhostile streams into `listen` (default limits): peak RSS of the listener")
    print("| stream | peak RSS (MiB) | received | rejected by reason | malformed |")
    print("|---|---|---|---|---|")
    for case in ("start and end only", "bomb", "no positions"):
        c, peak = hostile(case)
        print(f"| {case} | {peak:.0f} | {c['received']} | {json.dumps(c['rejected'])} | {json.dumps(c['malformed'])} |")


if __name__ == "__main__":
    main()
