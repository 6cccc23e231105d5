"""Picture sheets for the benchmarks: labelled PNGs laid out in a grid."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageDraw


def tile(rows: list[list[tuple[str, bytes]]], path: Path, scale: float = 1.0) -> None:
    """A grid of labelled PNGs (rows of (label, png bytes)), shrunk by ``scale``, written to ``path``."""
    pics = [[(label, Image.open(io.BytesIO(b)).convert("RGB")) for label, b in row] for row in rows]
    w = max(p.width for row in pics for _, p in row)
    h = max(p.height for row in pics for _, p in row) + 14
    grid = Image.new("RGB", (w * max(len(r) for r in pics), h * len(pics)), "white")
    draw = ImageDraw.Draw(grid)
    for i, row in enumerate(pics):
        for j, (label, p) in enumerate(row):
            grid.paste(p, (j * w, i * h + 14))
            draw.text((j * w + 4, i * h + 1), label, fill="black")
    if scale != 1.0:
        grid = grid.resize((int(grid.width * scale), int(grid.height * scale)), Image.Resampling.LANCZOS)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.quantize(64).save(path, optimize=True)
