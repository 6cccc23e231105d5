"""Checkpoints a worker can resume from: the frames used, the state and the histories, as one ``.npz``."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from workers.data import Geometry, ScanData
from workers.errors import DataError


@dataclass
class Checkpoint:
    """scan: the frames (scan coordinates); state: object, probe, positions, origin;
    ``iterations_done``: schedule epochs completed (after the scan, for streams)."""

    scan: ScanData
    frame_index: np.ndarray
    state: dict[str, np.ndarray]
    loss: np.ndarray
    time_s: np.ndarray
    iterations_done: int
    attrs: dict[str, Any]

    def save(self, path: str | Path) -> None:
        """Write atomically (a temporary file renamed over ``path``)."""
        g = self.scan.geometry
        arrays = {
            "intensities": self.scan.intensities,
            "scan_positions": self.scan.positions,
            "frame_index": self.frame_index,
            "loss": self.loss,
            "time_s": self.time_s,
            "geometry": np.array([g.wavelength, g.distance, g.pixel_size]),
            "meta": np.array(json.dumps({"kind": g.kind, "iterations_done": self.iterations_done, **self.attrs})),
            **{f"state_{k}": v for k, v in self.state.items()},
        }
        if self.scan.mask is not None:
            arrays["mask"] = self.scan.mask
        tmp = Path(f"{path}.tmp.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> Checkpoint:
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                kind = meta.pop("kind")
                done = int(meta.pop("iterations_done"))
                wavelength, distance, pixel = (float(v) for v in z["geometry"])
                scan = ScanData(
                    z["intensities"],
                    z["scan_positions"],
                    Geometry(kind, wavelength, distance, pixel),
                    z["mask"] if "mask" in z else None,
                    source=str(path),
                )
                state = {k: z[f"state_{k}"] for k in ("object", "probe", "positions", "origin")}
                return cls(scan, z["frame_index"], state, z["loss"], z["time_s"], done, meta)
        except (OSError, KeyError, ValueError) as exc:
            raise DataError(f"{path}: not a readable checkpoint ({exc})") from None
