"""Parts of a training manifest shared by every trained network: where it ran and which weights it wrote."""

from __future__ import annotations

import hashlib
import platform
from pathlib import Path
from typing import Any

import torch


def environment(device: torch.device | str) -> dict[str, Any]:
    """The device, CPU threads (on a CPU), torch version and machine a training ran on."""
    return {
        "device": str(device),
        "cpu_threads": torch.get_num_threads() if str(device) == "cpu" else None,
        "torch": torch.__version__,
        "machine": platform.machine(),
    }


def weights_record(path: Path) -> dict[str, Any]:
    """The weights file's name, size and sha256."""
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
