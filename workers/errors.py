"""Errors a user sees as one clear line (no torch import, so the service can catch them)."""

from __future__ import annotations

from pydantic import ValidationError


def validation_problems(exc: ValidationError, whole: str) -> str:
    """The validation errors of ``exc`` on one line, ``field: message; ...``; an error on the model as a
    whole (a validator across fields, no location) is named ``whole``."""
    return "; ".join(f"{'.'.join(str(x) for x in e['loc']) or whole}: {e['msg']}" for e in exc.errors())


class DataError(ValueError):
    """Input that cannot be reconstructed; the message names the source, the field and the problem."""


class DeviceError(RuntimeError):
    """A requested device that this machine cannot provide."""


class StoppedBeforeFrames(Exception):
    """A live scan was asked to stop before any usable frame had arrived (``StreamSource.first``): there is
    nothing to reconstruct and nothing failed, so the caller records the run as cancelled."""
