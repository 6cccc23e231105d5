"""The wire formats by name (no heavy imports: the command line lists them at start-up)."""

from __future__ import annotations

from enum import StrEnum


class Protocol(StrEnum):
    """A wire format the receiver decodes and the virtual detector encodes (``workers.stream.formats``)."""

    NATIVE = "native"
    DECTRIS_V1 = "dectris-v1"
    DECTRIS_V2 = "dectris-v2"
