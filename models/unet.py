"""The fast-forward U-Net of seed 003 (Ditter et al.): a warmed-up object state in, its change toward the converged
state out; trained with pixel-wise L2 plus an image-gradient term; applied to any object size in blended tiles.

Input channels (``workers.ff_state.features``): the real part minus 1 and the imaginary part of the object divided
by its illumination-weighted mean (global phase and scale removed), and the illumination map sum_r |P(x - r)|^2 over
its maximum (where the data constrain the object). Output: the change of the two object channels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

WEIGHTS = Path(__file__).parent / "weights" / "fast_forward.pt"
IN_CHANNELS = 3
OUT_CHANNELS = 2


def _block(a: int, b: int) -> nn.Sequential:
    """Two 3x3 convolutions with ReLU (no normalisation layer: a tile's output must not depend on tile statistics)."""
    return nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.ReLU(), nn.Conv2d(b, b, 3, padding=1), nn.ReLU())


class UNet(nn.Module):
    """U-Net (Ronneberger et al. 2015) with ``levels`` encoder-decoder levels of ``width`` x 2^k channels, a
    bottleneck below the last pooling, max pooling down, transposed convolutions up, skip connections;
    (B, IN_CHANNELS, H, W) -> (B, OUT_CHANNELS, H, W) with H and W multiples of ``multiple`` = 2^levels.
    The output layer starts at zero: the untrained network makes no jump."""

    def __init__(self, levels: int = 4, width: int = 16) -> None:
        super().__init__()
        if levels < 1 or width < 1:
            raise ValueError(f"U-Net needs levels >= 1 and width >= 1, got {levels} and {width}")
        self.levels, self.width = levels, width
        widths = [width * 2**k for k in range(levels + 1)]
        self.down = nn.ModuleList(_block(a, b) for a, b in zip([IN_CHANNELS, *widths[:-2]], widths[:-1], strict=True))
        self.bottom = _block(widths[-2], widths[-1])
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[k + 1], widths[k], 2, stride=2) for k in range(levels))
        self.merge = nn.ModuleList(_block(2 * widths[k], widths[k]) for k in range(levels))
        self.head = nn.Conv2d(width, OUT_CHANNELS, 1)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.bias.zero_()  # type: ignore[union-attr]  # a Conv2d made with bias=True

    @property
    def multiple(self) -> int:
        """What the input's height and width must be multiples of."""
        return int(2**self.levels)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2] % self.multiple or x.shape[-1] % self.multiple:
            raise ValueError(
                f"U-Net input {tuple(x.shape[-2:])}: height and width must be multiples of {self.multiple}"
            )
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        x = self.bottom(x)
        for k in reversed(range(self.levels)):
            x = self.merge[k](torch.cat([self.up[k](x), skips[k]], dim=1))
        out: Tensor = self.head(x)
        return out


def fast_forward_loss(pred: Tensor, target: Tensor, weight: Tensor, gradient_weight: float = 1.0) -> Tensor:
    """Seed 003's loss on (B, C, H, W) images: the ``weight``-ed (B, 1, H, W) mean of |pred - target|^2 plus
    ``gradient_weight`` times that of the squared finite differences of (pred - target) along both axes."""
    diff = pred - target
    total = weight.sum().clamp_min(1e-12) * diff.shape[1]
    l2 = (weight * diff.square()).sum() / total
    dy = (diff[..., 1:, :] - diff[..., :-1, :]).square() * torch.minimum(weight[..., 1:, :], weight[..., :-1, :])
    dx = (diff[..., :, 1:] - diff[..., :, :-1]).square() * torch.minimum(weight[..., :, 1:], weight[..., :, :-1])
    return l2 + gradient_weight * (dy.sum() + dx.sum()) / total


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """First pixels of tiles of ``tile`` covering ``size`` >= tile with at least ``overlap`` shared (last flush)."""
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    return [*starts, size - tile]


def _ramp(tile: int, overlap: int, device: torch.device) -> Tensor:
    """Blending weight along one axis of a tile: rising linearly over ``overlap`` pixels at each end, 1 between."""
    i = torch.arange(tile, device=device, dtype=torch.float32)
    return (torch.minimum(i + 1, tile - i) / (overlap + 1)).clamp(max=1.0)


@torch.no_grad()
def apply_tiled(net: nn.Module, x: Tensor, multiple: int, tile: int = 128, overlap: int = 32, batch: int = 8) -> Tensor:
    """``net`` on one image ``x`` (C, H, W) of any size, in tiles of ``tile`` (a multiple of ``multiple``) that
    share ``overlap`` pixels and are blended with linear ramps (weights normalised, so a pixelwise network gives
    exactly its untiled output); an image smaller than a tile is padded (replicated edges) and cropped back."""
    if tile % multiple:
        raise ValueError(f"tile {tile} must be a multiple of {multiple}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap {overlap} must be in [0, tile)")
    h, w = x.shape[-2:]
    ph, pw = max(tile - h, 0), max(tile - w, 0)
    padded = F.pad(x[None], (0, pw, 0, ph), mode="replicate")[0] if ph or pw else x
    hh, ww = padded.shape[-2:]
    corners = [(r, c) for r in tile_starts(hh, tile, overlap) for c in tile_starts(ww, tile, overlap)]
    ramp = _ramp(tile, overlap, x.device)
    window = ramp[:, None] * ramp[None, :]
    out: Tensor | None = None
    total = torch.zeros((hh, ww), device=x.device)
    for k in range(0, len(corners), batch):
        group = corners[k : k + batch]
        tiles = torch.stack([padded[:, r : r + tile, c : c + tile] for r, c in group])
        pred = net(tiles)
        if out is None:
            out = torch.zeros((pred.shape[1], hh, ww), dtype=pred.dtype, device=x.device)
        for (r, c), p in zip(group, pred, strict=True):
            out[:, r : r + tile, c : c + tile] += p * window
            total[r : r + tile, c : c + tile] += window
    assert out is not None
    return (out / total)[:, :h, :w]


def save_fast_forward(net: UNet, path: Path, meta: dict[str, Any]) -> None:
    """Write the network's architecture, float32 weights and ``meta`` (what it was trained for) to ``path``."""
    state = {k: v.detach().cpu().float() for k, v in net.state_dict().items()}
    torch.save({"levels": net.levels, "width": net.width, "meta": meta, "state": state}, path)


def load_fast_forward(path: str | Path | None = None, *, device: torch.device | str = "cpu") -> UNet:
    """The trained network (the shipped ``models/weights/fast_forward.pt`` by default), in eval mode, no gradients."""
    file = Path(path) if path is not None else WEIGHTS
    if not file.is_file():
        raise FileNotFoundError(f"fast-forward weights not found: {file}")
    try:
        saved = torch.load(file, map_location="cpu", weights_only=True)
        net = UNet(levels=int(saved["levels"]), width=int(saved["width"]))
        net.load_state_dict(saved["state"])
    except Exception as exc:  # a truncated file, another network, not our format at all
        raise ValueError(f"fast-forward weights unreadable: {file}: {type(exc).__name__}: {exc}") from exc
    net = net.to(device).eval()
    net.requires_grad_(False)
    return net
