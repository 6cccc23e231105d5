"""The wire protocol (see PROTOCOL.md): message types, format detection and the field rules the formats share.

Three formats carry the same messages: the native PtychoStream format (JSON header + raw
frame), DECTRIS SIMPLON stream v1 (JSON ``htype`` parts) and DECTRIS stream v2 (one CBOR
message); their decoders and encoders are ``workers.stream.formats``. Positions are CXI
sample translations (x, y, z) in metres; ``workers.units`` maps them to pixels.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson

from workers.stream import codecs
from workers.stream.kinds import Protocol

NATIVE = "ptychostream"
CBOR_MAGIC = b"\xd9\xd9\xf7"
FRAME_DTYPES = ("uint8", "uint16", "uint32", "int16", "int32", "float32", "float64")
Part = bytes | bytearray | memoryview
Translation = tuple[float, float, float]
Header = dict[str, Any]
_NUMBER = (int, float)
_DTYPES = {name: np.dtype(name).newbyteorder("<") for name in FRAME_DTYPES}


class ProtocolError(ValueError):
    """A message that cannot be decoded."""


class UnknownEncoding(ProtocolError):
    """Neither JSON nor CBOR, or a frame compression this decoder does not know."""


class UnknownVersion(ProtocolError):
    """A native message of a version this decoder does not know."""


class UnknownType(ProtocolError):
    """A message type this decoder does not know."""


class MalformedMessage(ProtocolError):
    """A known message type with missing or invalid fields."""


class CorruptFrame(ProtocolError):
    """A frame whose header decodes but whose payload does not (checksum, size, compression)."""

    def __init__(self, scan_id: str, index: int, reason: str, detail: str) -> None:
        super().__init__(f"frame {index} of scan {scan_id}: {reason}: {detail}")
        self.scan_id, self.index, self.reason = scan_id, index, reason


@dataclass(frozen=True)
class ScanStart:
    """A scan begins. Energy in eV, distance and detector pixel in metres; probe (MODE, M, M) or None;
    ``valid`` (Y, X) bool, False on the detector's bad pixels (its pixel mask), or None."""

    scan_id: str
    shape: tuple[int, int]
    dtype: str
    energy_ev: float
    distance_m: float
    pixel_size_m: float
    propagation: Literal["far", "near"] = "far"
    expected_frames: int | None = None
    probe: np.ndarray | None = None
    protocol: Protocol = Protocol.NATIVE
    valid: np.ndarray | None = None


@dataclass(frozen=True)
class Frame:
    """One detector frame (Y, X); ``position_m`` the sample translation (x, y, z) in metres, or None."""

    scan_id: str
    index: int
    data: np.ndarray
    position_m: Translation | None
    nbytes: int


@dataclass(frozen=True)
class FrameBatch:
    """Several frames of one scan in one message (native ``frames``): those that decode, and the corrupt ones."""

    scan_id: str
    frames: tuple[Frame, ...]
    corrupt: tuple[CorruptFrame, ...]


@dataclass(frozen=True)
class Position:
    """The sample translation (x, y, z) in metres of frame ``index`` (the separate position stream)."""

    scan_id: str
    index: int
    position_m: Translation


@dataclass(frozen=True)
class ScanEnd:
    """A scan ends; ``frames_sent`` where the sender says how many it sent."""

    scan_id: str
    frames_sent: int | None = None


Message = ScanStart | Frame | FrameBatch | Position | ScanEnd


def detect(parts: Sequence[Part]) -> tuple[Protocol, Header | None]:
    """The format of a message, told by its first part, and that part's JSON header (None for CBOR), parsed once.

    JSON with ``htype``: SIMPLON v1; JSON with ``"protocol": "ptychostream"``: native; the CBOR
    self-describe tag: stream v2. Raises a ``ProtocolError`` subclass for anything else.
    """
    if not parts:
        raise MalformedMessage("empty message")
    first = memoryview(parts[0])
    if first[:1] == b"{":
        head = json_object(first)
        if "htype" in head:
            return Protocol.DECTRIS_V1, head
        if head.get("protocol") == NATIVE:
            return Protocol.NATIVE, head
        raise UnknownType(f"JSON message of unknown kind (keys {sorted(head)[:6]})")
    if first[:3] == CBOR_MAGIC:
        return Protocol.DECTRIS_V2, None
    raise UnknownEncoding(f"first part is neither JSON nor CBOR (starts {bytes(first[:4])!r})")


# -- field rules shared by the formats ------------------------------------------------------------


def json_object(part: Part) -> Header:
    """A JSON part that must hold an object."""
    try:
        value = orjson.loads(part)
    except orjson.JSONDecodeError as exc:
        raise MalformedMessage(f"invalid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise MalformedMessage(f"JSON header must be an object, got {type(value).__name__}")
    return value


def field(d: Mapping[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    """``d[key]``, which must be of ``kind`` (a bool is never a number)."""
    value = d.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise MalformedMessage(f"{what}: field {key!r} missing or not {kind}")
    return value


def number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return type(value) in _NUMBER and math.isfinite(value)


def position(value: Any, what: str) -> Translation | None:
    """A position field: None, or 2-3 finite numbers (metres) as an (x, y, z) tuple."""
    if value is None:
        return None
    ok = type(value) in (list, tuple) and 2 <= len(value) <= 3 and all(type(v) in _NUMBER for v in value)
    if not (ok and all(map(math.isfinite, value))):
        raise MalformedMessage(f"{what}: position_m must be 2 or 3 finite numbers, got {value!r}")
    return (float(value[0]), float(value[1]), float(value[2]) if len(value) == 3 else 0.0)


def shape(value: Any, what: str) -> tuple[int, int]:
    """A frame shape: two integers in [1, 65535]."""
    if not (type(value) in (list, tuple) and len(value) == 2 and type(value[0]) is int and type(value[1]) is int):
        raise MalformedMessage(f"{what}: shape must be two positive integers, got {value!r}")
    if not (0 < value[0] < 65536 and 0 < value[1] < 65536):
        raise MalformedMessage(f"{what}: shape must be two integers in [1, 65535], got {value!r}")
    return value[0], value[1]


def frame_dtype(value: Any, what: str) -> np.dtype:
    """One of ``FRAME_DTYPES`` by name, little-endian."""
    dtype = _DTYPES.get(value) if type(value) is str else None
    if dtype is None:
        raise UnknownEncoding(f"{what}: dtype {value!r} is not one of {FRAME_DTYPES}")
    return dtype


def propagation(value: Any) -> Literal["far", "near"]:
    if value not in ("far", "near"):
        raise MalformedMessage(f"propagation must be 'far' or 'near', got {value!r}")
    return value


def frame_array(
    payload: Part,
    frame_shape: tuple[int, int],
    dtype: np.dtype,
    algorithm: str | None,
    scan_id: str,
    index: int,
    *,
    raw_lz4: bool = False,
) -> np.ndarray:
    """Frame ``index`` from its payload (raw: no copy); one that does not decode is a ``CorruptFrame``
    (``size`` if raw, else ``decompression``)."""
    try:
        return codecs.decode_array(payload, frame_shape, dtype, algorithm, raw_lz4=raw_lz4)
    except codecs.UnknownCodec as exc:
        raise UnknownEncoding(str(exc)) from None
    except codecs.CodecError as exc:
        raise CorruptFrame(scan_id, index, "size" if algorithm is None else "decompression", str(exc)) from None


def pixel_mask(
    payload: Part,
    mask_shape: tuple[int, int],
    dtype: np.dtype,
    algorithm: str | None,
    frames: tuple[int, int],
    what: str,
) -> np.ndarray:
    """The valid pixels (Y, X) of a DECTRIS pixel mask (nonzero: bad); it must decode and match the frames."""
    try:
        mask = codecs.decode_array(payload, mask_shape, dtype, algorithm)
    except codecs.UnknownCodec as exc:
        raise UnknownEncoding(f"{what}: {exc}") from None
    except codecs.CodecError as exc:
        raise MalformedMessage(f"{what}: {exc}") from None
    return checked_mask(mask == 0, frames, what)


def checked_mask(valid: np.ndarray, frames: tuple[int, int], what: str) -> np.ndarray:
    """A start message's valid-pixel mask, refused unless it has the frames' shape."""
    if valid.shape != frames:
        raise MalformedMessage(f"{what}: pixel mask of shape {valid.shape} does not match frames of shape {frames}")
    return valid
