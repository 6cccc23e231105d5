"""``ptychostream simulate``: a simulated scan with its ground truth, as CXI."""

from __future__ import annotations

import argparse
from typing import Any

from service.cli.common import Subparsers, UsageError


def cmd_simulate(args: argparse.Namespace) -> dict[str, Any]:
    from workers.fluorescence import is_element
    from workers.io import write_cxi
    from workers.runtime import check_output
    from workers.simulate import simulate

    for flag, value, low in (("--probe-size", args.probe_size, 8), ("--positions", args.positions, 1)):
        if value < low:
            raise UsageError(f"{flag} must be at least {low}, got {value}")
    if not args.photons > 0:
        raise UsageError(f"--photons must be positive (inf for no noise), got {args.photons}")
    if args.position_error < 0:
        raise UsageError(f"--position-error must be >= 0, got {args.position_error}")
    elements = tuple(e.strip() for e in args.xrf.split(",") if e.strip()) if args.xrf else ()
    for element in elements:
        if not is_element(element):
            raise UsageError(f"--xrf: {element!r} is not an element symbol")
    check_output(args.out)
    data = simulate(
        probe_size=args.probe_size,
        n_positions=args.positions,
        overlap=args.overlap,
        photons=args.photons,
        near_field=args.near_field,
        probe_kind=args.probe,
        scan=args.scan,
        position_error=args.position_error,
        seed=args.seed,
        xrf=elements,
        link=args.xrf_link,
    )
    write_cxi(args.out, data, data.truth)
    return {
        "file": args.out,
        "frames": data.n_frames,
        "frame_size": data.frame_size,
        "object_shape": list(data.truth["object"].shape),
        "propagation": data.geometry.kind,
        "pixel_size_m": data.geometry.pixel_size,
        "mean_counts_per_frame": float(data.intensities.sum(axis=(1, 2)).mean()),
    } | ({"xrf_elements": list(elements)} if elements else {})


def register(sub: Subparsers) -> None:
    """Add the ``simulate`` command."""
    p = sub.add_parser("simulate", help="write a simulated scan (with its ground truth) as CXI")
    p.add_argument("out", metavar="OUT.cxi")
    p.add_argument("--probe-size", type=int, default=128, help="frame/probe size M in pixels (default 128)")
    p.add_argument("--positions", type=int, default=400, help="number of scan positions (default 400)")
    p.add_argument("--overlap", type=float, default=0.7, help="1 - step / beam diameter (default 0.7)")
    p.add_argument("--photons", type=float, default=1e6, help="photons per frame; inf for no noise (default 1e6)")
    p.add_argument("--near-field", action="store_true", help="near-field (Fresnel) geometry")
    p.add_argument("--probe", choices=["focused", "structured", "near"], help="probe kind (default by geometry)")
    p.add_argument("--scan", choices=["fermat", "raster", "random"], default="fermat", help="scan pattern")
    p.add_argument("--position-error", type=float, default=0.0, help="RMS error added to recorded positions, px")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--xrf", metavar="EL,EL", help="simulate fluorescence of these elements (e.g. Fe,Zn) and their maps")
    p.add_argument(
        "--xrf-link", choices=["physical", "linear"], default="physical", help="how the maps make the absorption"
    )
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_simulate)
