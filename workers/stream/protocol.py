"""The wire protocol (see PROTOCOL.md): message types, format detection and the field rules the formats share.

Three formats carry the same messages: the native PtychoStream format (JSON header + raw
frame), DECTRIS SIMPLON stream v1 (JSON ``htype`` parts) and DECTRIS stream v2 (one CBOR
message); their decoders and encoders are ``workers.stream.formats``. Positions are CXI
sample translations (x, y, z) in metres; ``workers.units`` maps them to pixels.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import orjson

from workers.job import StreamLimits
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


class InvalidStart(MalformedMessage):
    """A start message of scan ``scan_id`` that describes no usable scan (a missing field, a zero energy, a pixel
    of 0 m, an unknown dtype, ...)."""

    def __init__(self, scan_id: str, detail: str) -> None:
        super().__init__(detail)
        self.scan_id = scan_id


@contextmanager
def start_of(scan_id: str) -> Iterator[None]:
    """Decoding the start message of ``scan_id``: any ``ProtocolError`` becomes an ``InvalidStart`` of it."""
    try:
        yield
    except InvalidStart:
        raise
    except ProtocolError as exc:
        raise InvalidStart(scan_id, str(exc)) from None


class CorruptFrame(ProtocolError):
    """A frame whose header decodes but whose payload does not (checksum, size, compression)."""

    def __init__(self, scan_id: str, index: int, reason: str, detail: str) -> None:
        super().__init__(f"frame {index} of scan {scan_id}: {reason}: {detail}")
        self.scan_id, self.index, self.reason = scan_id, index, reason


@dataclass(frozen=True)
class Expect:
    """What a frame may declare before its payload is decoded: the scan's frame shape (None before a start)
    and the most bytes one decoded frame (or pixel mask) may take. A frame that declares more is refused
    without inflating anything (``CorruptFrame``: ``shape``, ``frame size``)."""

    shape: tuple[int, int] | None = None
    max_bytes: int = StreamLimits.model_fields["max_frame_bytes"].default


ANY_FRAME = Expect()


@dataclass(frozen=True)
class ScanStart:
    """A scan begins. Energy in eV, distance and detector pixel in metres; probe (MODE, M, M) or None;
    ``valid`` (Y, X) bool, False on the detector's bad pixels (its pixel mask), or None; ``saturation``: counts
    above which a pixel is implausible (the detector's saturation value or readout bit depth), or None.

    Construction validates every field (``InvalidStart`` names the field and the problem), so a start
    that reaches the receiver describes a scan that can be reconstructed.
    """

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
    saturation: int | None = None

    def __post_init__(self) -> None:
        with start_of(self.scan_id):
            self._check()

    def _check(self) -> None:
        what = f"{self.protocol} start"
        for name in ("energy_ev", "distance_m", "pixel_size_m"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not (math.isfinite(value) and value > 0)
            ):
                raise MalformedMessage(f"{what}: {name} must be a positive finite number, got {value!r}")
        shape(list(self.shape), what)
        if self.dtype not in FRAME_DTYPES:
            raise MalformedMessage(f"{what}: dtype {self.dtype!r} is not one of {FRAME_DTYPES}")
        if self.propagation not in ("far", "near"):
            raise MalformedMessage(f"{what}: propagation must be 'far' or 'near', got {self.propagation!r}")
        for name in ("expected_frames", "saturation"):
            value = getattr(self, name)
            if value is not None and not (type(value) is int and value > 0):
                raise MalformedMessage(f"{what}: {name} must be null or a positive integer, got {value!r}")
        probe = self.probe
        if probe is not None and not (probe.ndim == 3 and probe.shape[1] == probe.shape[2] and probe.size):
            raise MalformedMessage(f"{what}: probe must have shape (modes, M, M), got {probe.shape}")
        if probe is not None and not np.isfinite(probe).all():
            raise MalformedMessage(f"{what}: probe has NaN or infinite values")
        if self.valid is not None:
            checked_mask(self.valid, self.shape, what)

    @property
    def frame_bytes(self) -> int:
        """The bytes of one decoded frame."""
        return self.shape[0] * self.shape[1] * _DTYPES[self.dtype].itemsize


@dataclass(frozen=True)
class Frame:
    """One detector frame (Y, X); ``position_m`` the sample translation (x, y, z) in metres, or None;
    ``fluorescence`` the frame's X-ray fluorescence counts by element symbol, or None."""

    scan_id: str
    index: int
    data: np.ndarray
    position_m: Translation | None
    nbytes: int
    fluorescence: Mapping[str, float] | None = None


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


def saturation(cutoff: Any, readout_bits: Any, dtype: str) -> int | None:
    """The counts above which a pixel is implausible, from a DECTRIS start: its saturation value (count cutoff)
    where given, else the largest count of its readout bit depth where that is below the image's; else None."""
    limits = [cutoff] if type(cutoff) is int and cutoff > 0 else []
    image_bits = _DTYPES[dtype].itemsize * 8 if dtype in _DTYPES else 0
    if type(readout_bits) is int and 0 < readout_bits < image_bits and dtype.startswith("uint"):
        limits.append((1 << readout_bits) - 1)
    return min(limits, default=None)


def frame_array(
    payload: Part,
    frame_shape: tuple[int, int],
    dtype: np.dtype,
    algorithm: str | None,
    scan_id: str,
    index: int,
    expect: Expect,
    *,
    raw_lz4: bool = False,
) -> np.ndarray:
    """Frame ``index`` from its payload (raw: no copy). The declared shape and size are checked against
    ``expect`` before anything is inflated; a frame refused or that does not decode is a ``CorruptFrame``
    (``shape``, ``frame size``, then ``size`` if raw, else ``decompression``)."""
    if expect.shape is not None and frame_shape != expect.shape:
        raise CorruptFrame(scan_id, index, "shape", f"{frame_shape}, the scan's frames are {expect.shape}")
    if frame_shape[0] * frame_shape[1] * dtype.itemsize > expect.max_bytes:
        detail = f"{frame_shape} {dtype} is over the {expect.max_bytes} bytes a frame may take"
        raise CorruptFrame(scan_id, index, "frame size", detail)
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
    expect: Expect,
) -> np.ndarray:
    """The valid pixels (Y, X) of a DECTRIS pixel mask (nonzero: bad); it must match the frames and fit
    ``expect.max_bytes`` (both checked before it is inflated), and decode."""
    if mask_shape != frames:
        raise MalformedMessage(f"{what}: pixel mask of shape {mask_shape} does not match frames of shape {frames}")
    if frames[0] * frames[1] * dtype.itemsize > expect.max_bytes:
        raise MalformedMessage(f"{what}: a {frames} {dtype} pixel mask is over {expect.max_bytes} bytes")
    try:
        mask = codecs.decode_array(payload, mask_shape, dtype, algorithm)
    except codecs.UnknownCodec as exc:
        raise UnknownEncoding(f"{what}: {exc}") from None
    except codecs.CodecError as exc:
        raise MalformedMessage(f"{what}: {exc}") from None
    return mask == 0


def checked_mask(valid: np.ndarray, frames: tuple[int, int], what: str) -> np.ndarray:
    """A start message's valid-pixel mask, refused unless it has the frames' shape."""
    if valid.shape != frames:
        raise MalformedMessage(f"{what}: pixel mask of shape {valid.shape} does not match frames of shape {frames}")
    return valid
