"""The nonexpansive DnCNN denoiser of PINE (seed 001): D(x) = x - R(x), with R 1-Lipschitz by real spectral
normalisation (RealSN, Ryu et al. 2019) of every convolution."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

WEIGHTS = Path(__file__).parent / "weights" / "dncnn.pt"
SN_SIZE = 48  # side of the image on which each convolution's operator norm is estimated (zero padding, as the layer)


class DnCNN(nn.Module):
    """17 layers of 3x3 convolutions (1 -> C, (depth - 2) x C -> C, C -> 1) with biases and ReLU between, no batch
    normalisation; ``forward`` is the denoiser D(x) = x - R(x) on (B, 1, H, W) images in [0, 1]."""

    def __init__(self, depth: int = 17, channels: int = 64) -> None:
        super().__init__()
        if depth < 2:
            raise ValueError(f"DnCNN depth must be at least 2, got {depth}")
        widths = [1] + [channels] * (depth - 1) + [1]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1, bias=True) for a, b in pairwise(widths))
        generator = torch.Generator().manual_seed(0)
        for i, conv in enumerate(self.layers):
            u = torch.randn(1, conv.in_channels, SN_SIZE, SN_SIZE, generator=generator)
            # the power-iteration vectors persist across steps but are not weights: kept out of the state_dict
            self.register_buffer(f"_sn_u{i}", u / u.norm(), persistent=False)

    @property
    def layers(self) -> list[nn.Conv2d]:
        """The convolutions, first to last."""
        return [conv for conv in self.convs if isinstance(conv, nn.Conv2d)]

    def residual(self, x: Tensor) -> Tensor:
        """R(x): the network's estimate of the noise in x."""
        for conv in self.convs[:-1]:
            x = F.relu(conv(x))
        out: Tensor = self.convs[-1](x)
        return out

    def forward(self, x: Tensor) -> Tensor:
        return x - self.residual(x)

    @torch.no_grad()
    def operator_norms(self, iterations: int = 1) -> list[float]:
        """Each convolution's largest singular value as a linear operator on SN_SIZE x SN_SIZE images (zero padding,
        as the layer), by power iteration on conv2d and its adjoint conv_transpose2d, continuing from the stored
        vectors. Layers of one shape iterate together as one grouped convolution (one call instead of fifteen)."""
        convs = self.layers
        norms = [0.0] * len(convs)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, conv in enumerate(convs):
            by_shape.setdefault(tuple(conv.weight.shape), []).append(i)
        for layers in by_shape.values():
            k = len(layers)
            w = torch.cat([convs[i].weight for i in layers])  # (k * out, in, 3, 3)
            u = torch.cat([getattr(self, f"_sn_u{i}") for i in layers], dim=1)  # (1, k * in, S, S)
            for _ in range(iterations):
                u = F.conv_transpose2d(F.conv2d(u, w, padding=1, groups=k), w, padding=1, groups=k)
                u = u / u.reshape(k, -1).norm(dim=1).clamp_min(1e-30).repeat_interleave(u.shape[1] // k)[:, None, None]
            sigmas = F.conv2d(u, w, padding=1, groups=k).reshape(k, -1).norm(dim=1)
            for j, (i, part) in enumerate(zip(layers, u.chunk(k, dim=1), strict=True)):
                getattr(self, f"_sn_u{i}").copy_(part)
                norms[i] = float(sigmas[j])
        return norms

    @torch.no_grad()
    def normalise_(self, iterations: int = 1) -> None:
        """Divide every convolution's weights by its operator norm (RealSN), in place: each layer, and so R,
        becomes 1-Lipschitz (biases do not change a Lipschitz constant, ReLU is 1-Lipschitz). One iteration per
        optimiser step suffices in training, the vectors persisting; use more from a fresh start."""
        for conv, sigma in zip(self.layers, self.operator_norms(iterations), strict=True):
            conv.weight.div_(sigma)


def load_denoiser(path: str | Path | None = None, *, device: torch.device | str = "cpu") -> DnCNN:
    """The trained denoiser (the shipped ``models/weights/dncnn.pt`` by default) in eval mode, without gradients."""
    file = Path(path) if path is not None else WEIGHTS
    if not file.is_file():
        raise FileNotFoundError(f"denoiser weights not found: {file}")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
        depth = len({k.split(".")[1] for k in state if k.startswith("convs.")})
        channels = int(state["convs.0.weight"].shape[0])
        net = DnCNN(depth=depth, channels=channels)
        net.load_state_dict(state)
    except Exception as exc:  # a truncated file, another network, not a state_dict at all
        raise ValueError(f"denoiser weights unreadable: {file}: {type(exc).__name__}: {exc}") from exc
    net = net.to(device).eval()
    net.requires_grad_(False)
    return net
