"""Benchmark peer: run pty-chi's ePIE, rPIE, LSQML or BH-CG on a PtychoStream interchange npz.

Run with the peer venv's interpreter (see PEERS.md), never the project's::

    /work/venv-peers/bin/python tests/benchmarks/ptychi_runner.py IN.npz --engine epie|rpie|lsqml|bh-cg \
        --epochs 10 --batch-size 1 --threads 2 [--alpha A] [--beta B] [--no-probe-update] --out OUT.npz

Input npz (our convention): ``intensities`` (N, M, M) float32 in detector layout
(``workers.layout``: far field with the zero frequency at the centre, near field the real-space
hologram as recorded); ``positions`` (N, 2) float64, (row, col) of the probe window's top-left
corner in object pixels; ``probe`` (K, M, M) complex64; ``object`` (H, W) complex64. Far-field
model: I_r = fftshift(|fft2(P * S_r O, norm="ortho")|^2).

Mapping onto pty-chi 2.2 (read from its source):

* Data: pty-chi's far field predicts intensities with the zero frequency at index [0, 0] and its
  own ``fft_shift`` option applies ``fftshift`` (wrong inverse for odd M), so far-field frames
  (and mask) are ``ifftshift``ed here and ``fft_shift=False`` is passed. Near-field frames are
  real-space holograms in both codes and go in unshifted (``fft_shift=False`` too).
* FFT norm: pty-chi's far field is ``fft2`` with norm="backward" (|.|^2 is M^2 times ours), so
  the probe goes in divided by M and comes out multiplied by M; data and loss keep our units.
* Near field: when the npz also holds ``wavelength``, ``distance`` and ``pixel_size`` (metres),
  pty-chi propagates with its angular-spectrum transfer function exp(2 pi i z sqrt(1/lambda^2 - |f|^2)),
  which is our Fresnel kernel exp(-i pi lambda z |f|^2) times a constant phase (the two differ by
  < 1e-8 rad at our sampling); it is unitary, so the probe goes in unscaled.
* Positions: pty-chi positions are probe *centres* relative to ``pos_origin_coords``; the window
  is cut at integer start ``round(p + origin - (M - 1) / 2)`` and the fractional rest is applied
  as a Fourier shift of the probe (first mode only), not of the object. With origin fixed to
  ((M-1)/2, (M-1)/2) (``SPECIFIED``) a pty-chi position equals our top-left corner, for any H, W
  and M, and no object padding or offset is involved. For integer positions the two models are
  identical (1e-7). For sub-pixel ones pty-chi's exit wave is ours translated by the fraction,
  which is exact only for a band-limited object and a probe that vanishes at its window edge
  (measured 5e-6 relative for a smooth object, 1e-2 for a white-noise one), and probe modes
  after the first are not shifted at all.
* Mask: an optional ``mask`` (M, M) bool, True for valid pixels, centred like the intensities,
  becomes pty-chi's ``valid_pixel_mask``; its displayed loss (which ignores that mask) is taken
  with model and data zeroed outside it, so that it sums over the same pixels as ours.
* BH-CG: pty-chi's ``BHReconstructor`` (the seed 002 authors' implementation) with
  ``method="CG"`` on one batch of all frames (its documented use of CG), and its probe scaling
  ``rho`` at the value its documentation gives per geometry (1 near field, 0.1 far field); its
  displayed loss is the same mean squared amplitude error.
* Switched off: position correction, OPR (one OPR mode, weights fixed), all object/probe
  regularisers, object-probe ambiguity removal (a rescale every 10 epochs) and LSQML's
  first-epoch probe-intensity rescale (epoch 0 would otherwise make no update and would touch the
  probe under --no-probe-update). Everything else is pty-chi's default (random batch order,
  SGD with step 1, incoherent-mode orthogonalisation, LSQML Gaussian noise model).

Per-epoch time: ``task.run(1)`` called once per epoch (pty-chi's documented way to continue a
run), timed with ``time.perf_counter``; ``setup_s`` is the task construction. ``loss`` is pty-chi's
displayed per-epoch loss: mean over batches of mean((sqrt(I_model) - sqrt(I))^2), each batch's
model taken before its update.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ENGINES = ("epie", "rpie", "lsqml", "bh-cg")
_TORCHVISION_OPS: list[torch.library.Library] = []


def import_ptychi() -> Any:
    """Import ptychi beside a CPU torch and PyPI's (CUDA-linked) torchvision.

    ptychi imports torchvision only for ``GaussianBlur`` (random initial guesses, unused here).
    When torchvision's C extension cannot load, its import still registers fake kernels for
    ``torchvision::nms``/``qnms`` and dies; declaring those two schemas first lets its pure-Python
    parts import. No torchvision operator is ever run.
    """
    try:
        import torchvision  # noqa: F401
    except RuntimeError:
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        lib = torch.library.Library("torchvision", "FRAGMENT")
        for op in ("nms", "qnms"):
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _TORCHVISION_OPS.append(lib)
    import ptychi
    import ptychi.api
    import ptychi.api.task

    return ptychi


def to_ptychi(frames: np.ndarray, near: bool) -> np.ndarray:
    """Detector layout -> pty-chi's: far field zero frequency from the centre to [0, 0]; near field unchanged."""
    return frames if near else np.fft.ifftshift(frames, axes=(-2, -1))


def build_task(
    data: dict[str, np.ndarray],
    engine: str,
    epochs: int,
    batch_size: int,
    alpha: float | None = None,
    beta: float | None = None,
    update_probe: bool = True,
) -> Any:
    """A pty-chi ``PtychographyTask`` for interchange ``data`` (see the module docstring)."""
    ptychi = import_ptychi()
    api = ptychi.api
    size = data["probe"].shape[-1]
    kinds = {"epie": api.EPIEOptions, "rpie": api.RPIEOptions, "lsqml": api.LSQMLOptions, "bh-cg": api.BHOptions}
    options = kinds[engine]()
    near = "distance" in data

    rec = options.reconstructor_options
    rec.num_epochs = epochs
    rec.batch_size = batch_size
    rec.default_device = api.Devices.CPU
    rec.default_dtype = api.Dtypes.FLOAT32
    if engine == "lsqml":
        rec.rescale_probe_intensity_in_first_epoch = False
    if engine == "bh-cg":
        rec.method = "CG"
        rec.batch_size = len(data["intensities"])
        options.probe_options.rho = 1.0 if near else 0.1

    options.data_options.fft_shift = False
    valid = to_ptychi(data["mask"].astype(bool), near) if "mask" in data else None
    if valid is not None:
        options.data_options.valid_pixel_mask = valid
    if near:
        options.data_options.free_space_propagation_distance_m = float(data["distance"])
        options.data_options.wavelength_m = float(data["wavelength"])
        options.object_options.pixel_size_m = float(data["pixel_size"])
    obj = options.object_options
    obj.determine_position_origin_coords_by = api.ObjectPosOriginCoordsMethods.SPECIFIED
    obj.position_origin_coords = [(size - 1) / 2, (size - 1) / 2]
    obj.remove_object_probe_ambiguity.enabled = False
    options.probe_options.optimizable = update_probe
    options.probe_position_options.optimizable = False
    options.opr_mode_weight_options.optimizable = False
    if alpha is not None:
        obj.alpha = alpha
    if beta is not None:
        options.probe_options.alpha = beta

    positions = np.asarray(data["positions"], dtype=np.float64)
    task = api.task.PtychographyTask(
        options,
        diffraction_data=to_ptychi(data["intensities"].astype(np.float32), near),
        object_data=data["object"].astype(np.complex64)[None],
        probe_data=(data["probe"] / (1 if near else size)).astype(np.complex64)[None],
        probe_position_y_px=positions[:, 0].copy(),
        probe_position_x_px=positions[:, 1].copy(),
    )
    if valid is not None:
        tracker = task.reconstructor.loss_tracker
        metric, keep = tracker.metric_function, torch.as_tensor(valid)
        tracker.metric_function = lambda y_pred, y_true: metric(y_pred * keep, y_true * keep)
    return task


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path)
    parser.add_argument("--engine", choices=ENGINES, required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--alpha", type=float, help="ePIE/rPIE object alpha (pty-chi default 0.1)")
    parser.add_argument("--beta", type=float, help="ePIE/rPIE probe alpha (pty-chi default 0.1)")
    parser.add_argument("--no-probe-update", action="store_true")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.engine in ("lsqml", "bh-cg") and (args.alpha is not None or args.beta is not None):
        parser.error("--alpha/--beta apply to epie and rpie only")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    with np.load(args.input) as f:
        data = {k: f[k] for k in f.files}
    ptychi = import_ptychi()

    t0 = time.perf_counter()
    task = build_task(data, args.engine, args.epochs, args.batch_size, args.alpha, args.beta, not args.no_probe_update)
    setup_s = time.perf_counter() - t0

    epoch_times = np.empty(args.epochs)
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        task.run(1)
        epoch_times[epoch] = time.perf_counter() - t0

    size = data["probe"].shape[-1]
    obj = task.get_data_to_cpu("object", as_numpy=True)[0].astype(np.complex64)
    scale = 1 if "distance" in data else size
    probe = (task.get_data_to_cpu("probe", as_numpy=True)[0] * scale).astype(np.complex64)
    loss = task.reconstructor.loss_tracker.table["loss"].to_numpy(dtype=np.float64)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, object=obj, probe=probe, epoch_times=epoch_times, loss=loss, setup_s=setup_s)

    print(
        json.dumps(
            {
                "peer": "ptychi",
                "ptychi_version": ptychi.__version__,
                "torch_version": torch.__version__,
                "engine": args.engine,
                "epochs": args.epochs,
                "batch_size": args.batch_size,
                "threads": torch.get_num_threads(),
                "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                "setup_s": setup_s,
                "epoch_s_mean": float(epoch_times.mean()),
                "epoch_s_total": float(epoch_times.sum()),
                "loss_first": float(loss[0]),
                "loss_last": float(loss[-1]),
                "out": str(args.out),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
