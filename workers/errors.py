"""Errors a user sees as one clear line (no torch import, so the service can catch them)."""


class DataError(ValueError):
    """Input that cannot be reconstructed; the message names the source, the field and the problem."""


class DeviceError(RuntimeError):
    """A requested device that this machine cannot provide."""
