"""The engine interface: streaming first (``add_frames``, ``iterate``, ``snapshot``)."""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
import torch

from workers import layout, physics
from workers.data import Geometry
from workers.engines.options import OPTIONS, BatchedOptions, EngineName, EngineOptions
from workers.errors import DataError
from workers.fluorescence import Fluorescence
from workers.state import ReconState


class Engine(ABC):
    """Advances a ``ReconState`` against a growing set of measured frames.

    Frames arrive with ``add_frames`` (all at once offline, in chunks while streaming);
    ``iterate(n)`` runs n epochs (or iterations) over every frame received so far and
    records, per epoch, the normalised amplitude residual
    sum_r || |D(P S_r O)| - sqrt(I_r) ||^2 / sum_r sum I_r and the wall time since the
    first ``iterate`` call.
    """

    name: ClassVar[EngineName]
    options_model: ClassVar[type[EngineOptions]]  # OPTIONS[name], set for every class that declares a name

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            cls.options_model = OPTIONS[cls.name]

    def __init__(
        self,
        state: ReconState,
        geometry: Geometry,
        options: EngineOptions,
        *,
        mask: np.ndarray | None = None,
        seed: int = 0,
    ) -> None:
        if not isinstance(options, self.options_model):
            raise TypeError(f"{self.name}: options must be {self.options_model.__name__}, got {type(options).__name__}")
        self.state = state
        self.geometry = geometry
        self.options = options
        self.device = state.device
        self.size = int(state.probe.shape[-1])
        self.propagator = physics.propagator(geometry, self.size, self.device)
        shifted = None if mask is None else layout.to_model(np.asarray(mask, dtype=np.float32), geometry.kind)
        self.mask = None if shifted is None else torch.as_tensor(shifted, device=self.device)
        self.generator = torch.Generator().manual_seed(seed)
        self.amplitudes = torch.empty((0, self.size, self.size), dtype=torch.float32, device=self.device)
        self.fluorescence: Fluorescence | None = None  # counts of every frame received (arrival order), if any
        self.n_frames = 0
        self.total_intensity = 0.0
        self.subpixel = False
        self.epoch = 0
        self.loss_history: list[float] = []
        self.time_history: list[float] = []
        self._t0: float | None = None
        self.probe_power = _power(state.probe)

    def constrain_probe_power(self) -> None:
        """Rescale the probe so that sum |P|^2 is ``probe_power`` again (no host sync).

        The data fix only the product P S_r O: this pins the free scale (O / s, s P); see ``pie``.
        """
        power = _power(self.state.probe)
        self.state.probe.mul_((self.probe_power / power.clamp(min=torch.finfo(power.dtype).tiny)).sqrt())

    def add_frames(
        self, intensities: np.ndarray, positions: np.ndarray, fluorescence: Fluorescence | None = None
    ) -> None:
        """Append frames (n, M, M) in detector layout (``workers.layout``) at scan positions (n, 2) pixels,
        with their fluorescence counts (n columns) when the scan records them (every frame or none).

        Frames may be float or raw integer counts: they move to the device in their own dtype
        (integers: half the bytes of float32) and become amplitudes there.
        """
        if intensities.ndim != 3 or intensities.shape[1:] != (self.size, self.size):
            raise DataError(f"frames: expected shape (n, {self.size}, {self.size}), got {intensities.shape}")
        if positions.shape != (intensities.shape[0], 2):
            raise DataError(f"positions: expected shape ({intensities.shape[0]}, 2), got {positions.shape}")
        n_new = intensities.shape[0]
        self.fluorescence = self._joined_fluorescence(fluorescence, n_new)
        frames = torch.from_numpy(np.ascontiguousarray(intensities)).to(self.device).to(torch.float32)
        amp_t = layout.to_model(frames, self.geometry.kind).sqrt()
        need = self.n_frames + n_new
        if need > self.amplitudes.shape[0]:
            grown = torch.empty((max(need, 2 * self.amplitudes.shape[0]), self.size, self.size), device=self.device)
            grown[: self.n_frames] = self.amplitudes[: self.n_frames]
            self.amplitudes = grown
        self.amplitudes[self.n_frames : need] = amp_t
        self.n_frames = need
        weight = amp_t.square() if self.mask is None else amp_t.square() * self.mask
        self.total_intensity += float(weight.sum())
        self.state.append_positions(np.asarray(positions, dtype=np.float64))
        self.positions_changed()

    def _joined_fluorescence(self, new: Fluorescence | None, n_new: int) -> Fluorescence | None:
        """The counts so far with ``new`` (n_new frames) appended; refuses a scan that records them for some frames."""
        old = self.fluorescence
        if new is None and old is None:
            return None
        if new is None or (old is None and self.n_frames):
            first, last = self.n_frames, self.n_frames + n_new - 1
            raise DataError(f"fluorescence: frames {first}..{last}: the scan has counts for some frames only")
        new.validate("fluorescence", n_new)
        if old is None:
            return new
        if new.elements != old.elements:
            raise DataError(f"fluorescence: elements {list(new.elements)} after {list(old.elements)}")
        return Fluorescence(np.concatenate([old.counts, new.counts], 1), old.elements, old.sensitivity, old.units)

    def adopt_frames(self, other: Engine) -> None:
        """Take over the frames of the previous engine on the same state (the next schedule stage)."""
        if other.state is not self.state:
            raise ValueError("adopt_frames: engines must share one ReconState")
        self.amplitudes, self.n_frames, self.total_intensity = other.amplitudes, other.n_frames, other.total_intensity
        self.fluorescence = other.fluorescence
        self.positions_changed()

    def report(self) -> dict[str, Any]:
        """Result attributes this engine adds (none by default; joint-xrf: its link and alpha)."""
        return {}

    def positions_changed(self) -> None:
        """Recompute what depends on the positions (call after refining them)."""
        _, frac = physics.split_positions(self.state.positions)
        self.subpixel = bool((frac.abs() > 1e-6).any())

    def split(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Integer corners and (when the scan is sub-pixel) fractions of the frames ``index``."""
        corner, frac = physics.split_positions(self.state.positions[index])
        return corner, frac if self.subpixel else None

    def iterate(self, n: int = 1) -> list[float]:
        """Run ``n`` epochs over all frames received; returns their losses."""
        if self.n_frames == 0:
            raise DataError("no frames: add_frames() before iterate()")
        if self._t0 is None:
            self._t0 = time.perf_counter()
        losses = []
        for _ in range(n):
            update_probe = self.options.update_probe and self.epoch >= self.options.probe_update_start
            residual = self.epoch_step(update_probe)
            loss = float(residual) / max(self.total_intensity, 1e-30)
            self.epoch += 1
            self.loss_history.append(loss)
            self.time_history.append(time.perf_counter() - self._t0)
            losses.append(loss)
        return losses

    @abstractmethod
    def epoch_step(self, update_probe: bool) -> torch.Tensor:
        """One pass over all frames; returns the summed squared amplitude residual (scalar tensor)."""

    def snapshot(self) -> dict[str, np.ndarray]:
        """Host copy of the state and history (safe to hand to another thread)."""
        out = self.state.to_numpy()
        out["loss"] = np.asarray(self.loss_history)
        out["time_s"] = np.asarray(self.time_history)
        return out


class BatchedEngine(Engine):
    """An engine that visits the frames in mini-batches, in an order, within each epoch (PIE, Adam)."""

    options: BatchedOptions

    def order(self) -> torch.Tensor:
        """Frame indices in this epoch's visiting order (on the engine's device)."""
        if self.options.order == "newest-first":
            idx = torch.arange(self.n_frames - 1, -1, -1)
        else:
            idx = torch.randperm(self.n_frames, generator=self.generator)
        return idx.to(self.device)

    def batches(self) -> list[torch.Tensor]:
        """This epoch's mini-batches of frame indices."""
        return list(torch.split(self.order(), self.options.batch_size))


def _power(probe: torch.Tensor) -> torch.Tensor:
    """sum |P|^2 over all modes and pixels (a real scalar tensor on the probe's device)."""
    return probe.real.square().sum() + probe.imag.square().sum()


def orthogonalize_modes(probe: torch.Tensor) -> torch.Tensor:
    """Orthogonal probe modes (MODE, M, M) spanning the same space, strongest first."""
    if probe.shape[0] == 1:
        return probe
    flat = probe.reshape(probe.shape[0], -1)
    u, s, vh = torch.linalg.svd(flat, full_matrices=False)
    return (s[:, None] * vh).reshape(probe.shape)
