"""The state being reconstructed, on one device (torch): object, probe modes, positions."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class ReconState:
    """What is being reconstructed, on one device.

    object    : (H, W) complex64.
    probe     : (MODE, M, M) complex64.
    positions : (FRAME, 2) float64, probe-window corners in object-array pixels.
    origin    : (2,) float64 such that object coordinates = scan coordinates + origin.
    elements  : element symbol -> (H, W) float32 areal density map (g/cm^2), where a joint
                fluorescence engine runs; grown with the object (zeros outside).
    """

    object: torch.Tensor
    probe: torch.Tensor
    positions: torch.Tensor
    origin: np.ndarray
    margin: int = 8
    elements: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def initial(cls, probe: np.ndarray, *, margin: int = 8, device: torch.device | str = "cpu") -> ReconState:
        """An empty state holding the probe guess; ``append_positions`` grows a unit object around the scan."""
        return cls(
            object=torch.ones((0, 0), dtype=torch.complex64, device=device),
            probe=torch.tensor(probe, dtype=torch.complex64, device=device),  # a copy: engines update it in place
            positions=torch.zeros((0, 2), dtype=torch.float64, device=device),
            origin=np.zeros(2),
            margin=margin,
        )

    @property
    def device(self) -> torch.device:
        return self.object.device

    def cover(self, scan_positions: np.ndarray) -> None:
        """Grow the object (padding with ones) so that ``scan_positions`` lie inside with margin."""
        m, g = self.probe.shape[-1], self.margin
        if self.object.numel() == 0:
            self.origin = g - np.floor(scan_positions.min(0))
        pos = scan_positions + self.origin
        lo = np.minimum(np.floor(pos.min(0)) - g, 0).astype(int)
        h, w = self.object.shape
        hi = np.maximum(np.ceil(pos.max(0)) + m + g, (h, w)).astype(int)
        if (lo == 0).all() and hi[0] == h and hi[1] == w:
            return
        grown = torch.ones((hi[0] - lo[0], hi[1] - lo[1]), dtype=torch.complex64, device=self.device)
        grown[-lo[0] : -lo[0] + h, -lo[1] : -lo[1] + w] = self.object
        self.object = grown
        for name, old in self.elements.items():
            self.elements[name] = torch.zeros(grown.shape, dtype=old.dtype, device=self.device)
            self.elements[name][-lo[0] : -lo[0] + h, -lo[1] : -lo[1] + w] = old
        self.origin = self.origin - lo
        if self.positions.numel():
            self.positions = self.positions - torch.as_tensor(lo, dtype=torch.float64, device=self.device)

    def append_positions(self, scan_positions: np.ndarray) -> None:
        """Add frames' positions (scan coordinates), growing the object to cover them."""
        self.cover(scan_positions)
        new = torch.from_numpy(scan_positions + self.origin).to(self.device)
        self.positions = torch.cat([self.positions, new])

    def to_numpy(self) -> dict[str, np.ndarray]:
        """Host copies (never views of the state, also on the CPU): object (H, W), probe (MODE, M, M),
        positions (FRAME, 2), origin (2,), and ``elements/<symbol>`` (H, W) maps if any."""
        return {
            "object": self.object.detach().to("cpu", copy=True).numpy(),
            "probe": self.probe.detach().to("cpu", copy=True).numpy(),
            "positions": self.positions.detach().to("cpu", copy=True).numpy(),
            "origin": self.origin.copy(),
        } | {f"elements/{k}": v.detach().to("cpu", copy=True).numpy() for k, v in self.elements.items()}
