"""8-bit greyscale PNGs of reconstructions (torch-free: the API renders result files with it)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

KINDS = ("amplitude", "phase", "probe")


def png(image: np.ndarray) -> bytes:
    """8-bit greyscale PNG of ``image`` (H, W) scaled to its 1st-99th percentile."""
    lo, hi = np.percentile(image, [1, 99]) if image.size else (0.0, 1.0)
    scaled = np.clip((image - lo) / max(hi - lo, 1e-12), 0, 1)
    out = io.BytesIO()
    Image.fromarray((scaled * 255).astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()


def views(obj: np.ndarray, probe: np.ndarray) -> dict[str, np.ndarray]:
    """The images shown of a state: object amplitude and phase (H, W), the first probe mode's amplitude (M, M)."""
    return {"amplitude": np.abs(obj), "phase": np.angle(obj), "probe": np.abs(probe.reshape(-1, *probe.shape[-2:])[0])}
