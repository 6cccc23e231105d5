"""Peer forward model: pty-chi's predicted intensities for interchange npz files (see ``ptychi_runner.py``).

Run with the peer venv's interpreter (``tests/workers/test_crosscheck.py`` does)::

    /work/venv-peers/bin/python tests/benchmarks/ptychi_forward.py IN.npz [IN2.npz ...]

Each ``IN.npz`` (``positions``, ``probe``, ``object``, optionally ``wavelength``, ``distance`` and
``pixel_size`` for the near field; ``intensities`` only give the shape) gets ``IN.ptychi.npz``
beside it, holding ``intensities`` (N, M, M) float32: pty-chi's ``PlanarPtychographyForwardModel``
output for all frames, in pty-chi's own layout (far field: zero frequency at [0, 0]) and, through
``ptychi_runner.build_task``'s probe scaling, in our intensity units.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from ptychi_runner import build_task


def predict(path: Path) -> Path:
    """Write pty-chi's forward intensities for the interchange npz ``path``; return the output path."""
    with np.load(path) as f:
        data = {k: f[k] for k in f.files}
    task = build_task(data, "rpie", 1, 1, update_probe=False)
    with torch.no_grad():
        intensities = task.reconstructor.forward_model.forward(torch.arange(len(data["positions"])))
    out = path.with_suffix(".ptychi.npz")
    np.savez(out, intensities=intensities.cpu().numpy().astype(np.float32))
    return out


def main(argv: list[str]) -> int:
    torch.set_num_threads(1)
    for name in argv:
        print(predict(Path(name)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
