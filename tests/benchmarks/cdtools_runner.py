"""Benchmark peer: cdtools' own near-field recipe (its ``examples/near_field_ptycho.py``) on a CXI scan.

Run with the peer venv's interpreter (``bench_peers.py`` does)::

    /work/peers/bin/python tests/benchmarks/cdtools_runner.py IN.cxi --focus-distance F --out OUT.npz [--threads T]

Recipe (cdtools 0.3.2, as in its example): ``Ptycho2DDataset.from_cxi``, ``FancyPtycho.from_dataset(
dataset, n_modes=1, near_field=True, propagation_distance=F)`` (angular spectrum, Fresnel scaling,
amplitude MSE loss, SHARP-style near-field probe guess, translation offsets refined as it does by
default), then ``AdamReconstructor``: 100 epochs lr 0.04 batch 10, 50 epochs lr 0.005 batch 50,
then ``tidy_probes``.

Output npz: ``object`` (H, W) complex64 (cdtools' whole array), ``probe`` (K, M, M) complex64 (its
``probe_norm`` multiplied back), ``positions`` (N, 2) float64: the top-left corners of the frames'
windows in that array, (row, col) pixels (``translations_to_pixel`` of its corrected translations
minus ``min_translation``), ``weights`` (N,) its per-frame probe amplitude factors and
``background`` (M, M) its additive intensity (both refined by default), ``pixel_size`` (m), ``loss``
per epoch (its own normalised loss) and ``time_s`` (wall time since the first epoch started, per
epoch), and ``residual``: the final state's normalised amplitude residual in ITS OWN model,
sum mask (sqrt(I_model) - sqrt(I))^2 / sum mask I (our history loss), for comparison with ours.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

STAGES = ((100, 0.04, 10), (50, 0.005, 50))  # (epochs, learning rate, batch size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path)
    parser.add_argument("--focus-distance", type=float, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    import cdtools

    dataset = cdtools.datasets.Ptycho2DDataset.from_cxi(str(args.input))
    model = cdtools.models.FancyPtycho.from_dataset(
        dataset, n_modes=1, near_field=True, propagation_distance=args.focus_distance
    )
    recon = cdtools.reconstructors.AdamReconstructor(model, dataset)
    losses, times = [], []
    t0 = time.perf_counter()
    for epochs, lr, batch in STAGES:
        for loss in recon.optimize(epochs, lr=lr, batch_size=batch, thread=False):
            losses.append(float(loss))
            times.append(time.perf_counter() - t0)
    model.tidy_probes()

    with torch.no_grad():
        (_, measured_translations), patterns = dataset[:]
        index = torch.arange(len(dataset))
        simulated = torch.cat(
            [model.forward(index[i : i + 20], measured_translations[i : i + 20]) for i in range(0, len(index), 20)]
        )
        mask = dataset.mask.to(torch.float32)
        residual = float(((simulated.sqrt() - patterns.sqrt()) ** 2 * mask).sum() / (patterns * mask).sum())
        translations = model.corrected_translations(dataset)
        pix = cdtools.tools.interactions.translations_to_pixel(model.obj_basis, translations) - model.min_translation
        basis = model.obj_basis.numpy()
        probe = (model.probe * model.probe_norm).numpy().astype(np.complex64)
        obj = model.obj.numpy().astype(np.complex64)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        args.out,
        object=obj,
        probe=probe,
        positions=pix.numpy().astype(np.float64),
        weights=model.weights.detach().numpy().astype(np.float64),
        background=(model.background.detach() ** 2).numpy().astype(np.float64),
        residual=residual,
        pixel_size=float(np.linalg.norm(basis[:, 0])),
        loss=np.asarray(losses),
        time_s=np.asarray(times),
    )
    summary = {"peer": "cdtools", "epochs": len(losses), "time_s": times[-1], "residual": residual}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
