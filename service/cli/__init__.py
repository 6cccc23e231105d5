"""The ``ptychostream`` command line: one module per command; heavy modules (torch) are imported inside them."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import ValidationError

from service.cli import reconstruct, serve, simulate, stream, train
from service.cli.common import UsageError
from service.cli.lifecycle import Stopped
from workers.concurrency import share_cores
from workers.errors import DataError, DeviceError, validation_problems


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ptychostream", description="Streaming ptychography: simulate, reconstruct and evaluate scans."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in (simulate, reconstruct, stream, serve, train):
        command.register(sub)
    return parser


def _print(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(summary))
        return
    for key, value in summary.items():
        print(f"{key:>22}: {value:.6g}" if isinstance(value, float) else f"{key:>22}: {value}")


def _log_warnings_as_lines() -> None:
    """Warnings of the compute packages (e.g. a geometry that looks wrong) print as one line on stderr."""
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("ptychostream: warning: %(message)s"))
    logger = logging.getLogger("workers")
    if not logger.handlers:
        logger.addHandler(handler)
        logger.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    share_cores()
    # Prefect's temporary server would phone home (and log an error where there is no network, as at many beamlines)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    _log_warnings_as_lines()
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], dict[str, Any]] = args.func
    try:
        summary = func(args)
    except (UsageError, DataError, DeviceError, ValueError) as exc:
        message = str(exc) if not isinstance(exc, ValidationError) else _validation_message(exc)
        print(f"ptychostream {args.command}: error: {message}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"ptychostream {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Stopped as exc:
        print(f"ptychostream {args.command}: {exc}; stopped cleanly", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print(f"ptychostream {args.command}: interrupted", file=sys.stderr)
        return 130
    _print(summary, getattr(args, "json", False))
    return 0


def _validation_message(exc: ValidationError) -> str:
    return f"invalid {exc.title}: " + validation_problems(exc, exc.title)
