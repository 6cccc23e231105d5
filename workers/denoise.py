"""A real-image denoising network applied to a complex object, in tiles (PINE's D, seed 001 eq. 22).

D(O) = Dhat(Re O) + i Dhat(Im O): each channel is min-max rescaled to [0, 1] (the range the
network was trained on), denoised and scaled back. The range is taken over a region (the scanned
pixels; see ``workers.engines.pine``) and only that region's bounding box is denoised: outside it
D is the identity. Pixels of the box outside the region may lie outside the range: they are
clamped to [0, 1] before the network (clamping is 1-Lipschitz, so D stays nonexpansive).

Tiles: the box is cut into cores of ``tile`` pixels; each core is denoised with a halo of the
network's reach (the radius of its receptive field, from its convolutions) around it and only the
core is kept. A convolutional network's output at a pixel depends on its inputs within that reach
alone, so the tiled result equals the untiled one (to rounding): there are no seams to blend.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def reach(net: torch.nn.Module) -> int:
    """Receptive-field radius (pixels) of a network of stacked 2-D convolutions."""
    radius = 0
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            k, d = m.kernel_size, m.dilation
            radius += max(d[0] * (k[0] - 1) // 2, d[1] * (k[1] - 1) // 2)
    return radius


def bounding_box(region: Tensor) -> tuple[slice, slice]:
    """Rows and columns spanned by the True pixels of ``region`` (H, W); the whole array if none."""
    rows, cols = region.any(1).nonzero(), region.any(0).nonzero()
    if rows.numel() == 0:
        return slice(0, region.shape[0]), slice(0, region.shape[1])
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


class ComplexDenoiser:
    """PINE's D on complex objects with a real-image network ``net`` ((B, 1, h, w) -> (B, 1, h, w))."""

    def __init__(self, net: torch.nn.Module, tile: int = 256) -> None:
        if tile < 1:
            raise ValueError(f"tile must be >= 1, got {tile}")
        self.net = net
        self.tile = tile
        self.halo = reach(net)

    @torch.no_grad()
    def __call__(self, obj: Tensor, region: Tensor | None = None) -> Tensor:
        """D(``obj``) (H, W) complex; ``region`` (H, W) bool gives the range and the box (None or empty: all)."""
        if region is None or not bool(region.any()):
            region = torch.ones(obj.shape, dtype=torch.bool, device=obj.device)
        rows, cols = bounding_box(region)
        channels = torch.stack([obj.real, obj.imag])  # (2, H, W)
        inside = channels[:, region]
        lo, hi = inside.amin(1)[:, None, None], inside.amax(1)[:, None, None]
        span = hi - lo
        scaled = ((channels - lo) / span.clamp(min=torch.finfo(span.dtype).tiny)).clamp(0, 1)
        r0, r1 = max(rows.start - self.halo, 0), min(rows.stop + self.halo, obj.shape[0])
        c0, c1 = max(cols.start - self.halo, 0), min(cols.stop + self.halo, obj.shape[1])
        core = (slice(rows.start - r0, rows.stop - r0), slice(cols.start - c0, cols.stop - c0))
        denoised = self.tiled(scaled[:, None, r0:r1, c0:c1])[:, 0][(slice(None), *core)]
        box = channels[:, rows, cols]
        out = torch.where(span > 0, lo + span * denoised, box)  # a flat channel is left as it is
        result = obj.clone()
        result[rows, cols] = torch.complex(out[0], out[1])
        return result

    def tiled(self, images: Tensor) -> Tensor:
        """The network on ``images`` (B, 1, H, W), core by core with a halo of its reach."""
        h, w = images.shape[-2:]
        out = torch.empty_like(images)
        t, g = self.tile, self.halo
        for r in range(0, h, t):
            for c in range(0, w, t):
                r0, c0 = max(r - g, 0), max(c - g, 0)
                window = images[..., r0 : min(r + t + g, h), c0 : min(c + t + g, w)]
                rr, cc = min(r + t, h), min(c + t, w)
                out[..., r:rr, c:cc] = self.net(window)[..., r - r0 : rr - r0, c - c0 : cc - c0]
        return out
