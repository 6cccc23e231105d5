"""``ptychostream listen`` and ``replay``: receive a scan from a stream, or send one as a virtual detector."""

from __future__ import annotations

import argparse
from typing import Any

from service.cli.common import Subparsers, add_preprocess_arguments, preprocessing
from workers.job import StreamLimits
from workers.stream.kinds import Protocol

PROTOCOLS = [p.value for p in Protocol]
LIMITS = StreamLimits.model_fields
DISCARD_EVERY_S = 0.02  # listen empties the buffer at 50 Hz, not at every burst: no wake-up per burst, no GIL hand-over


def add_limit_arguments(p: argparse.ArgumentParser) -> None:
    """One flag per ``StreamLimits`` field (``--max-frame-bytes`` ...), its default and meaning from the model."""
    g = p.add_argument_group("receiver limits (bounds on its memory; see workers/stream/PROTOCOL.md)")
    for name, field in LIMITS.items():
        flag = "--" + name.replace("_", "-")
        g.add_argument(flag, type=int, metavar="N", help=f"{field.description} (default {field.default})")


def stream_limits(args: argparse.Namespace) -> StreamLimits:
    """The limits the flags of ``add_limit_arguments`` ask for (the model's defaults where not given)."""
    return StreamLimits(**{name: getattr(args, name) for name in LIMITS if getattr(args, name) is not None})


def cmd_listen(args: argparse.Namespace) -> dict[str, Any]:
    from workers.stream.preprocess import build_preprocessor
    from workers.stream.receiver import Receiver

    protocol = Protocol(args.protocol) if args.protocol else None
    preprocess = build_preprocessor(preprocessing(args))
    receiver = Receiver(
        args.endpoint,
        positions=args.positions,
        preprocess=preprocess,
        protocol=protocol,
        limits=stream_limits(args),
        idle_timeout_s=args.idle_timeout,
    ).start()
    try:
        while not receiver.done.wait(DISCARD_EVERY_S):
            receiver.buffer.discard()
        receiver.buffer.discard()
    finally:
        receiver.close()
    refused = receiver.refused()
    return receiver.counters() | ({"refused": refused} if refused else {})


def cmd_replay(args: argparse.Namespace) -> dict[str, Any]:
    from workers.io import load_scan
    from workers.stream.detector import Faults, replay

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


def register(sub: Subparsers) -> None:
    """Add the ``listen`` and ``replay`` commands."""
    p = sub.add_parser("listen", help="receive one scan from a stream; print frame accounting and rates")
    p.add_argument("endpoint", metavar="tcp://HOST:PORT")
    p.add_argument("--protocol", choices=PROTOCOLS, help="accept only this format (default: any)")
    p.add_argument("--positions", metavar="tcp://HOST:PORT", help="separate position stream")
    p.add_argument("--idle-timeout", type=float, help="s without data that end the scan (default: wait)")
    p.add_argument("--json", action="store_true", help="print the accounting as one JSON line")
    add_preprocess_arguments(p)
    add_limit_arguments(p)
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
