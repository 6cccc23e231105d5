"""``ptychostream train denoiser``: train PINE's nonexpansive DnCNN on dead-leaves images (``models.train``);
``ptychostream train fast-forward``: seed 003's fast-forward U-Net on simulated scans (``models.ff_train``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from models.fdsl import RECIPES
from service.cli.common import Subparsers

CONFIG_NAMES = ("tiny", "small", "full")  # models.train.CONFIGS, named here so that parsing needs no torch


def cmd_train_denoiser(args: argparse.Namespace) -> dict[str, Any]:
    from models.train import config_for, train
    from workers.devices import resolve_device

    device = resolve_device(args.device)
    config = config_for(args.config, args.data)
    manifest = train(config, Path(args.out), device=str(device), seed=args.seed, progress=not args.quiet)
    heldout = manifest["heldout"]
    return {
        "weights": str(Path(args.out) / manifest["weights"]["file"]),
        "manifest": str(Path(args.out) / "dncnn.json"),
        "config": args.config,
        "data": config.data,
        "steps": manifest["training"]["steps"],
        "train_wall_s": manifest["training"]["wall_s"],
        "device": manifest["training"]["device"],
        "dead_leaves_noisy_db": heldout["dead_leaves"]["after"]["noisy_db"],
        "dead_leaves_denoised_db": heldout["dead_leaves"]["after"]["denoised_db"],
        "ptycho_noisy_db": heldout["ptycho"]["after"]["noisy_db"],
        "ptycho_denoised_db": heldout["ptycho"]["after"]["denoised_db"],
        "lipschitz": manifest["lipschitz"]["measured"],
    }


def cmd_train_fast_forward(args: argparse.Namespace) -> dict[str, Any]:
    from models.ff_train import CONFIGS, train
    from workers.devices import resolve_device

    out = Path(args.out)
    data_dir = Path(args.data_dir) if args.data_dir else out / "data"
    device = str(resolve_device(args.device))
    config = CONFIGS[args.config]
    manifest = train(config, out, data_dir=data_dir, device=device, seed=args.seed, progress=not args.quiet)
    heldout = manifest["heldout"]
    return {
        "weights": str(out / manifest["weights"]["file"]),
        "manifest": str(out / "fast_forward.json"),
        "data": str(data_dir),
        "config": args.config,
        "steps": manifest["training"]["steps"],
        "train_wall_s": manifest["training"]["wall_s"],
        "device": manifest["training"]["device"],
        "heldout_distance_warm": heldout["mean_distance_warm"],
        "heldout_distance_jumped": heldout["mean_distance_jumped"],
        "heldout_accepted": f"{heldout['accepted']}/{len(heldout['scans'])}",
    }


def register(sub: Subparsers) -> None:
    """Add the ``train`` command (``train denoiser``, ``train fast-forward``)."""
    p = sub.add_parser("train", help="train a learned model")
    models = p.add_subparsers(dest="model", required=True, metavar="MODEL")
    d = models.add_parser("denoiser", help="PINE's nonexpansive DnCNN on formula-driven (dead-leaves) images")
    d.add_argument(
        "--config",
        choices=CONFIG_NAMES,
        default="small",
        help="tiny: seconds (tests); small: the shipped CPU recipe, ~15 min on one core; full: the seed's "
        "1,000 images x 50 epochs (a GPU). Default small",
    )
    d.add_argument(
        "--data",
        choices=RECIPES,
        help="training images: the seed's dead leaves, or dead leaves blended with smooth random fields "
        "(default: the config's; small uses leaves-on-fields, full the seed's leaves)",
    )
    d.add_argument("--out", default="results/denoiser", help="folder for dncnn.pt and dncnn.json")
    d.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.add_argument("--json", action="store_true", help="print the summary as JSON")
    d.set_defaults(func=cmd_train_denoiser)
    f = models.add_parser("fast-forward", help="the fast-forward U-Net (seed 003) on simulated warm-up/converged pairs")
    f.add_argument(
        "--config",
        choices=CONFIG_NAMES,
        default="small",
        help="tiny: seconds (tests); small: the shipped CPU recipe (80 small scans, ~25 min on one core); "
        "full: 4,000 beamline-sized scans and a wider network (a GPU). Default small",
    )
    f.add_argument("--out", default="results/fast_forward", help="folder for fast_forward.pt and fast_forward.json")
    f.add_argument("--data-dir", help="folder of the HDF5 shards (default OUT/data); existing shards are kept")
    f.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    f.add_argument("--json", action="store_true", help="print the summary as JSON")
    f.set_defaults(func=cmd_train_fast_forward)
