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
from workers.stream.formats import dectris_v1, dectris_v2, native

HERE = Path(__file__).parent
FRAME = np.arange(48, dtype=np.uint16).reshape(6, 8)
POSITION = np.array([1.5e-6, -2.5e-6, 0.0])
START = p.ScanStart("7", (6, 8), "uint16", 8000.0, 2.0, 75e-6, "far", 3)
VALID = np.ones((6, 8), bool)
VALID[2, 5] = VALID[4, 0] = False
MASKED = dataclasses.replace(START, valid=VALID)


def messages() -> dict[str, list[p.Part]]:
    return {
        "native_start": native.encode_start(START),
        "native_start_mask": native.encode_start(MASKED),
        "native_frame": native.encode_frame("7", 1, FRAME, POSITION),
        "native_frames": native.encode_frames("7", [1, 2], [FRAME, FRAME + 1], [POSITION, 2 * POSITION]),
        "native_position": native.encode_position("7", 1, POSITION),
        "native_end": native.encode_end("7", 3),
        "dectris_v1_start": dectris_v1.encode_start(START),
        "dectris_v1_start_mask": dectris_v1.encode_start(MASKED),
        "dectris_v1_frame": dectris_v1.encode_frame("7", 1, FRAME, None, None),
        "dectris_v1_frame_bslz4": dectris_v1.encode_frame("7", 1, FRAME, None, "bslz4"),
        "dectris_v1_frame_lz4": dectris_v1.encode_frame("7", 1, FRAME, None, "lz4"),
        "dectris_v1_end": dectris_v1.encode_end("7"),
        "dectris_v2_start": dectris_v2.encode_start(START),
        "dectris_v2_start_mask": dectris_v2.encode_start(MASKED),
        "dectris_v2_frame": dectris_v2.encode_frame("7", 1, FRAME, POSITION, None),
        "dectris_v2_frame_bslz4": dectris_v2.encode_frame("7", 1, FRAME, POSITION, "bslz4"),
        "dectris_v2_frame_lz4": dectris_v2.encode_frame("7", 1, FRAME, POSITION, "lz4"),
        "dectris_v2_end": dectris_v2.encode_end("7"),
    }


def main() -> None:
    for name, parts in messages().items():
        arrays = {
            f"part_{k}": np.frombuffer(bytes(memoryview(part).cast("B")), np.uint8) for k, part in enumerate(parts)
        }
        np.savez(HERE / f"{name}.npz", **arrays)


if __name__ == "__main__":
    main()
