"""What a running job leaves on disk as it goes: a checkpoint it can resume from and its partial result.

A checkpoint is one ``.npz``: the state, the histories, how many schedule epochs are done, and,
for a live stream, the frames received (a file job re-reads its input file instead).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from workers.atomic import replacing
from workers.data import Geometry, ScanData
from workers.errors import DataError
from workers.io import write_result

CHECKPOINT_ONLY = ("counters", "stage_epochs")  # attributes a resume needs that a result file does not show


@dataclass
class Checkpoint:
    """scan: the frames (scan coordinates) of a stream, None for a file job; frame_index: the frame
    number of each row of the state's positions; state: object, probe, positions, origin;
    ``iterations_done``: schedule epochs completed (after the scan, for streams)."""

    scan: ScanData | None
    frame_index: np.ndarray
    state: dict[str, np.ndarray]
    loss: np.ndarray
    time_s: np.ndarray
    iterations_done: int
    attrs: dict[str, Any]

    def save(self, path: str | Path) -> None:
        """Write atomically (a temporary file renamed over ``path``)."""
        arrays = {
            "frame_index": self.frame_index,
            "loss": self.loss,
            "time_s": self.time_s,
            "meta": np.array(json.dumps({"iterations_done": self.iterations_done, **self.attrs})),
            **{f"state_{k}": v for k, v in self.state.items()},
        }
        if self.scan is not None:
            g = self.scan.geometry
            arrays |= {
                "intensities": self.scan.intensities,
                "scan_positions": self.scan.positions,
                "geometry": np.array([g.wavelength, g.distance, g.pixel_size]),
                "kind": np.array(g.kind),
            }
            if self.scan.mask is not None:
                arrays["mask"] = self.scan.mask
        with replacing(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: str | Path) -> Checkpoint:
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                done = int(meta.pop("iterations_done"))
                scan = None
                if "intensities" in z:
                    wavelength, distance, pixel = (float(v) for v in z["geometry"])
                    scan = ScanData(
                        z["intensities"],
                        z["scan_positions"],
                        Geometry(str(z["kind"]), wavelength, distance, pixel),  # type: ignore[arg-type]
                        z["mask"] if "mask" in z else None,
                        source=str(path),
                    )
                state = {k: z[f"state_{k}"] for k in ("object", "probe", "positions", "origin")}
                return cls(scan, z["frame_index"], state, z["loss"], z["time_s"], done, meta)
        except (OSError, KeyError, ValueError) as exc:
            raise DataError(f"{path}: not a readable checkpoint ({exc})") from None


def result_state(state: dict[str, np.ndarray], frame_index: np.ndarray) -> dict[str, np.ndarray]:
    """The state with its positions in frame-number order (as the result file holds them)."""
    out = dict(state)
    out["positions"] = state["positions"][np.argsort(frame_index, kind="stable")]
    return out


class Autosave:
    """Saves a running job every ``interval_s``: the checkpoint (to resume) and the partial result
    (``attrs["complete"] = False``, for users; also what a worker that dies leaves behind).

    ``progress()`` returns what to save: the state's host copy, losses, times, epochs done,
    the frames (stream) and their frame numbers, and result attributes.
    """

    def __init__(self, result: str | Path | None, checkpoint: str | Path | None, interval_s: float) -> None:
        self.result, self.checkpoint, self.interval_s = result, checkpoint, interval_s
        self._last = time.monotonic()

    def maybe(self, progress: Callable[[], Checkpoint]) -> None:
        """Save if ``interval_s`` has passed since the last save."""
        if time.monotonic() - self._last >= self.interval_s:
            self.now(progress())

    def now(self, saved: Checkpoint) -> None:
        """Save ``saved`` now: the checkpoint, and the result file marked incomplete."""
        if self.checkpoint is not None:
            saved.save(self.checkpoint)
        if self.result is not None:
            attrs = {k: v for k, v in saved.attrs.items() if k not in CHECKPOINT_ONLY} | {"complete": False}
            state = result_state(saved.state, saved.frame_index)
            write_result(self.result, state, loss=saved.loss, time_s=saved.time_s, attrs=attrs)
        self._last = time.monotonic()
