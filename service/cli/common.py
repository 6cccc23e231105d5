"""What the commands share: the one-line usage error, ``--option`` pairs, frame-preprocessing arguments."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from workers.job import Preprocessing

Subparsers = argparse._SubParsersAction  # the object ``add_subparsers`` returns


class UsageError(Exception):
    """A command-line mistake; printed as one line, exit status 2."""


def option_pairs(pairs: Sequence[str]) -> dict[str, Any]:
    """``key=value`` strings into a dict, values parsed as JSON where they parse."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--option expects key=value, got {pair!r}")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def add_preprocess_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("frame preprocessing (live streams)")
    g.add_argument("--crop", type=int, metavar="M", help="crop frames to M x M around the centre")
    g.add_argument("--centre", type=int, nargs=2, metavar=("ROW", "COL"), help="zero frequency on the detector")
    g.add_argument("--bin", type=int, default=1, metavar="B", help="sum B x B pixels after cropping")
    g.add_argument("--hot", type=float, metavar="COUNTS", help="pixels above this are replaced by their neighbours")
    g.add_argument("--zinger", type=float, metavar="FACTOR", help="remove pixels above FACTOR x their neighbours")
    g.add_argument("--dark", metavar="DARK.npy", help="dark/background counts (Y, X) to subtract")
    g.add_argument("--bad-pixels", metavar="BAD.npy", help="(Y, X) array, nonzero marks a bad pixel")


def preprocessing(args: argparse.Namespace) -> Preprocessing:
    return Preprocessing(
        size=args.crop,
        centre=tuple(args.centre) if args.centre else None,
        binning=args.bin,
        hot=args.hot,
        zinger=args.zinger,
        dark=args.dark,
        bad_pixels=args.bad_pixels,
    )
