"""Errors a user sees as one clear line (no torch import, so the service can catch them)."""


class DataError(ValueError):
    """Input that cannot be reconstructed; the message names the source, the field and the problem."""


class DeviceError(RuntimeError):
    """A requested device that this machine cannot provide."""


class StoppedBeforeFrames(Exception):
    """A live scan was asked to stop before any usable frame had arrived (``StreamSource.first``): there is
    nothing to reconstruct and nothing failed, so the caller records the run as cancelled."""
