"""Streaming benchmark (run by hand): ingest rate per protocol, preview and result latency.

    .venv/bin/python tests/benchmarks/bench_stream.py [--frames 10000] [--repeats 3] [--positions 100] [--probe 64]

Ingest: a sender process pushes pre-encoded 128x128 uint16 frames (Poisson counts) over
loopback TCP as fast as it can, one frame per message, or 16 per native ``frames`` message;
the receiver (its own thread in this process) decodes, accounts, preprocesses and buffers
them while the main thread drains the buffer every 10 ms. Rates are over first-to-last
frame; zero loss means every frame received, none rejected, missing or duplicated. Sender,
receiver and consumer share this machine's cores.
Latency: a simulated scan replayed at 200 Hz into ``run_stream`` (ePIE); times from the
detector's last frame to the first preview of the complete scan, and to the first epoch whose
object is within 10% cRMS of the offline 100-epoch result.
"""

from __future__ import annotations

from workers.concurrency import share_cores

share_cores()  # as the CLI and the flows do, before torch is imported

import argparse  # noqa: E402
import multiprocessing as mp  # noqa: E402
import statistics  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import zmq  # noqa: E402

from workers.job import StreamLimits  # noqa: E402
from workers.metrics import truth_metrics  # noqa: E402
from workers.previews import Preview, PreviewPublisher  # noqa: E402
from workers.runtime import Hooks, Stage, run_schedule, run_stream  # noqa: E402
from workers.simulate import simulate  # noqa: E402
from workers.stream import codecs  # noqa: E402
from workers.stream.detector import replay  # noqa: E402
from workers.stream.formats import FORMATS, native  # noqa: E402
from workers.stream.protocol import Protocol, ScanStart  # noqa: E402
from workers.stream.receiver import Receiver  # noqa: E402

BATCH = 16
DRAIN_EVERY_S = 0.01  # the consumer takes what is buffered every 10 ms, as an engine does between epochs
CASES = [("native", None, 1), ("native", None, BATCH), ("dectris-v1", None, 1), ("dectris-v1", "bslz4", 1)]
CASES += [("dectris-v2", None, 1), ("dectris-v2", "bslz4", 1), ("dectris-v2", "lz4", 1)]


def encode(kind: str, compression: str | None, n: int, batch: int = 1) -> list[list[bytes]]:
    codecs.serial_openmp()
    rng = np.random.default_rng(0)
    pool = rng.poisson(rng.uniform(0.5, 20, (16, 128, 128))).astype(np.uint16)
    start = ScanStart("1", (128, 128), "uint16", 8000.0, 2.0, 75e-6, "far", n)
    position = np.zeros(3)
    fmt = FORMATS[Protocol(kind)]
    msgs = [fmt.encode_start(start)]
    if batch > 1:  # native "frames" messages
        for first in range(0, n, batch):
            index = list(range(first, min(first + batch, n)))
            msgs.append(native.encode_frames("1", index, [pool[i % 16] for i in index], [position] * len(index)))
    else:
        for i in range(n):
            where = position if fmt.positions_in_frames else None
            msgs.append(fmt.encode_frame("1", i, pool[i % 16], where, compression))
            if where is None:
                msgs.append(native.encode_position("1", i, position))
    msgs.append(fmt.encode_end("1", n))
    return [[bytes(memoryview(x).cast("B")) for x in m] for m in msgs]


def sender(endpoint: str, kind: str, compression: str | None, n: int, batch: int) -> None:
    msgs = encode(kind, compression, n, batch)
    context = zmq.Context()
    sock = context.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 10000)
    sock.connect(endpoint)
    for m in msgs:
        sock.send_multipart(m, copy=False)
    sock.close()
    context.term()


def ingest(kind: str, compression: str | None, n: int, batch: int = 1) -> dict[str, float]:
    receiver = Receiver("tcp://127.0.0.1:*", limits=StreamLimits(buffer_frames=8192)).start()
    proc = mp.get_context("spawn").Process(target=sender, args=(receiver.endpoint, kind, compression, n, batch))
    proc.start()
    drained = 0
    while not (receiver.done.is_set() and len(receiver.buffer) == 0):
        receiver.buffer.wait(0.05)
        time.sleep(DRAIN_EVERY_S)
        drained += len(receiver.buffer.drain()[0])
    proc.join()
    c = receiver.counters()
    receiver.close()
    lossless = c["received"] == drained == n and not c["frames_rejected"] and not c["missing"] and not c["duplicates"]
    return {"frames_per_s": c["frames_per_s"], "mb_per_s": c["bytes_per_s"] / 1e6, "lossless": lossless}


def latency(positions: int, probe: int) -> dict[str, float]:
    data = simulate(probe_size=probe, n_positions=positions, overlap=0.7, photons=1e6, seed=1)
    offline = run_schedule(data, [Stage.parse("epie", 100)], device=torch.device("cpu"))
    target = truth_metrics(offline.state["object"], offline.state["origin"], data.truth)["crms"]
    previews: list[Preview] = []
    publisher = PreviewPublisher(previews.append, interval_s=0.0, size=100000)
    receiver = Receiver("tcp://127.0.0.1:*", idle_timeout_s=30).start()
    report: list = []
    thread = threading.Thread(target=lambda: report.append(replay(data, receiver.endpoint, rate_hz=200)))
    thread.start()
    live = run_stream(receiver, [Stage.parse("epie", 100)], device=torch.device("cpu"), hooks=Hooks(previews=publisher))
    publisher.close()
    thread.join()
    receiver.close()
    last = report[0].last_frame_s
    complete = [q for q in previews if q.frames_used == data.n_frames]
    first_preview = complete[0].taken_s - last
    origin = live.state["origin"]
    to_result = float("nan")
    for q in complete:
        obj = q.amplitude * np.exp(1j * q.phase)
        if truth_metrics(obj, origin, data.truth)["crms"] <= 1.1 * target:
            to_result = q.taken_s - last
            break
    final = truth_metrics(live.state["object"], origin, data.truth)["crms"]
    return {"preview_s": first_preview, "result_s": to_result, "offline_crms": target, "stream_crms": final}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=3, help="ingest runs per case (median reported)")
    parser.add_argument("--positions", type=int, default=100)
    parser.add_argument("--probe", type=int, default=64)
    args = parser.parse_args()
    print(f"ingest: {args.frames} frames of 128x128 uint16 over loopback TCP, median of {args.repeats} runs\n")
    print("| protocol | compression | frames/message | frames/s (median) | frames/s (runs) | MB/s (wire) | zero loss |")
    print("|---|---|---|---|---|---|---|")
    for kind, compression, batch in CASES:
        runs = [ingest(kind, compression, args.frames, batch) for _ in range(args.repeats)]
        fps = [r["frames_per_s"] for r in runs]
        mb = statistics.median(r["mb_per_s"] for r in runs)
        spread = " / ".join(f"{f:.0f}" for f in fps)
        lossless = all(r["lossless"] for r in runs)
        row = [kind, compression or "none", batch, f"{statistics.median(fps):.0f}", spread, f"{mb:.1f}", lossless]
        print("| " + " | ".join(str(x) for x in row) + " |")
    r = latency(args.positions, args.probe)
    threads = torch.get_num_threads()
    setup = f"{args.positions} positions, {args.probe} px frames at 200 Hz, ePIE, CPU ({threads} threads)"
    print(f"\nlatency: {setup}")
    print(f"last frame -> first complete preview: {r['preview_s']:.3f} s")
    print(f"last frame -> within 10% cRMS of offline 100 epochs: {r['result_s']:.2f} s")
    print(f"cRMS offline (100 epochs) {r['offline_crms']:.4f}; streamed (live + 100 epochs) {r['stream_crms']:.4f}")


if __name__ == "__main__":
    main()
