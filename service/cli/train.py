"""``ptychostream train denoiser``: train PINE's nonexpansive DnCNN on dead-leaves images (``models.train``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from service.cli.common import Subparsers

CONFIG_NAMES = ("tiny", "small", "full")  # models.train.CONFIGS, named here so that parsing needs no torch


def cmd_train_denoiser(args: argparse.Namespace) -> dict[str, Any]:
    from models.train import CONFIGS, train
    from workers.devices import resolve_device

    device = resolve_device(args.device)
    manifest = train(CONFIGS[args.config], Path(args.out), device=str(device), seed=args.seed, progress=not args.quiet)
    heldout = manifest["heldout"]
    return {
        "weights": str(Path(args.out) / manifest["weights"]["file"]),
        "manifest": str(Path(args.out) / "dncnn.json"),
        "config": args.config,
        "steps": manifest["training"]["steps"],
        "train_wall_s": manifest["training"]["wall_s"],
        "device": manifest["training"]["device"],
        "dead_leaves_noisy_db": heldout["dead_leaves"]["after"]["noisy_db"],
        "dead_leaves_denoised_db": heldout["dead_leaves"]["after"]["denoised_db"],
        "ptycho_noisy_db": heldout["ptycho"]["after"]["noisy_db"],
        "ptycho_denoised_db": heldout["ptycho"]["after"]["denoised_db"],
        "lipschitz": manifest["lipschitz"]["measured"],
    }


def register(sub: Subparsers) -> None:
    """Add the ``train`` command (``train denoiser``)."""
    p = sub.add_parser("train", help="train a learned model")
    models = p.add_subparsers(dest="model", required=True, metavar="MODEL")
    d = models.add_parser("denoiser", help="PINE's nonexpansive DnCNN on formula-driven (dead-leaves) images")
    d.add_argument(
        "--config",
        choices=CONFIG_NAMES,
        default="small",
        help="tiny: seconds (tests); small: the shipped CPU recipe, ~10 min on one core; full: the seed's "
        "1,000 images x 50 epochs (a GPU). Default small",
    )
    d.add_argument("--out", default="results/denoiser", help="folder for dncnn.pt and dncnn.json")
    d.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.add_argument("--json", action="store_true", help="print the summary as JSON")
    d.set_defaults(func=cmd_train_denoiser)
