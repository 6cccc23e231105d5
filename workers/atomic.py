"""Atomic, durable file replacement: write beside the target, fsync, rename over it, fsync the folder.

A reader never sees half a file, and a rename that returned survives a power cut. A writer killed
mid-write leaves only its temporary (``temporary(path)``), which the next write replaces and which
whoever records the writer's death removes (``remove_temporary``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


def temporary(path: str | Path) -> Path:
    """Where a write of ``path`` goes before its rename: ``.tmp`` before its extension (which libraries such as
    numpy insist on), in the same folder (a rename across file systems is not atomic)."""
    path = Path(path)
    return path.with_name(f"{path.stem}.tmp{path.suffix}")


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """Yield the temporary to write; on a clean exit make it ``path`` durably, on an error remove it."""
    tmp = temporary(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    folder = os.open(Path(path).resolve().parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def remove_temporary(path: str | Path) -> bool:
    """Remove a dead writer's temporary of ``path``; True if there was one."""
    tmp = temporary(path)
    existed = tmp.exists()
    tmp.unlink(missing_ok=True)
    return existed
