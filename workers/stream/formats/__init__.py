"""The wire formats behind one table keyed by ``Protocol``: each format's decoder and encoders.

A new format is a module with ``decode(parts, head, expect)``, ``encode_start``, ``encode_frame`` and
``encode_end`` (the signatures of ``native``), a ``Protocol`` member, a row here and its rule
in ``protocol.detect``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from workers.stream.formats import dectris_v1, dectris_v2, native
from workers.stream.protocol import ANY_FRAME, Expect, Header, Message, Part, Protocol, ScanStart, detect


@dataclass(frozen=True)
class Format:
    """One wire format. ``positions_in_frames``: its frames can carry their positions (else position messages
    carry them)."""

    decode: Callable[[Sequence[Part], Header | None, Expect], Message]
    encode_start: Callable[[ScanStart], list[Part]]
    encode_frame: Callable[[str, int, np.ndarray, Sequence[float] | None, str | None], list[Part]]
    encode_end: Callable[[str, int | None], list[Part]]
    positions_in_frames: bool = True


FORMATS: dict[Protocol, Format] = {
    Protocol.NATIVE: Format(native.decode, native.encode_start, native.encode_frame, native.encode_end),
    Protocol.DECTRIS_V1: Format(
        dectris_v1.decode, dectris_v1.encode_start, dectris_v1.encode_frame, dectris_v1.encode_end, False
    ),
    Protocol.DECTRIS_V2: Format(
        dectris_v2.decode, dectris_v2.encode_start, dectris_v2.encode_frame, dectris_v2.encode_end
    ),
}


def decode(parts: Sequence[Part], expect: Expect = ANY_FRAME) -> Message:
    """Decode one multipart message of any supported format, its frames checked against ``expect`` before they
    are inflated; raises a ``ProtocolError`` subclass."""
    kind, head = detect(parts)
    return FORMATS[kind].decode(parts, head, expect)
