"""Write the recorded example messages of every protocol (run from the repository root).

Each message is ``<name>.npz`` with its parts as uint8 arrays ``part_0``, ``part_1``, ... in order;
the frames carry ``FRAME`` below, at ``POSITION`` where the format has one; ``*_start_mask``
carry the detector's pixel mask (``VALID``: two bad pixels).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from workers.stream import protocol as p

HERE = Path(__file__).parent
FRAME = np.arange(48, dtype=np.uint16).reshape(6, 8)
POSITION = np.array([1.5e-6, -2.5e-6, 0.0])
START = p.ScanStart("7", (6, 8), "uint16", 8000.0, 2.0, 75e-6, "far", 3)
VALID = np.ones((6, 8), bool)
VALID[2, 5] = VALID[4, 0] = False
MASKED = dataclasses.replace(START, valid=VALID)


def messages() -> dict[str, list[p.Part]]:
    return {
        "native_start": p.encode_native_start(START),
        "native_start_mask": p.encode_native_start(MASKED),
        "native_frame": p.encode_native_frame("7", 1, FRAME, POSITION),
        "native_frames": p.encode_native_frames("7", [1, 2], [FRAME, FRAME + 1], [POSITION, 2 * POSITION]),
        "native_position": p.encode_position("7", 1, POSITION),
        "native_end": p.encode_native_end("7", 3),
        "dectris_v1_start": p.encode_v1_start(START),
        "dectris_v1_start_mask": p.encode_v1_start(MASKED),
        "dectris_v1_frame": p.encode_v1_frame("7", 1, FRAME, None),
        "dectris_v1_frame_bslz4": p.encode_v1_frame("7", 1, FRAME, "bslz4"),
        "dectris_v1_frame_lz4": p.encode_v1_frame("7", 1, FRAME, "lz4"),
        "dectris_v1_end": p.encode_v1_end("7"),
        "dectris_v2_start": p.encode_v2_start(START),
        "dectris_v2_start_mask": p.encode_v2_start(MASKED),
        "dectris_v2_frame": p.encode_v2_frame("7", 1, FRAME, POSITION, None),
        "dectris_v2_frame_bslz4": p.encode_v2_frame("7", 1, FRAME, POSITION, "bslz4"),
        "dectris_v2_frame_lz4": p.encode_v2_frame("7", 1, FRAME, POSITION, "lz4"),
        "dectris_v2_end": p.encode_v2_end("7"),
    }


def main() -> None:
    for name, parts in messages().items():
        arrays = {
            f"part_{k}": np.frombuffer(bytes(memoryview(part).cast("B")), np.uint8) for k, part in enumerate(parts)
        }
        np.savez(HERE / f"{name}.npz", **arrays)


if __name__ == "__main__":
    main()
