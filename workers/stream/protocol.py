"""The wire protocol (see PROTOCOL.md): message types, a pure ``decode`` and the encoders.

Three formats share one decoder: the native PtychoStream format (JSON header + raw frame),
DECTRIS SIMPLON stream v1 (JSON ``htype`` parts) and DECTRIS stream v2 (one CBOR message).
Positions are CXI sample translations (x, y, z) in metres; ``workers.stream.units`` maps
them to pixels.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

import cbor2
import crc32c
import numpy as np
import orjson

from workers.stream import codecs

NATIVE = "ptychostream"
NATIVE_VERSION = 1
CBOR_MAGIC = b"\xd9\xd9\xf7"
TAG_ARRAY, TAG_COMPRESSED = 40, 56500
TYPED_ARRAY_TAGS = {64: "u1", 69: "<u2", 70: "<u4", 71: "<u8", 72: "i1", 77: "<i2", 78: "<i4", 85: "<f4", 86: "<f8"}
TAG_OF_DTYPE = {np.dtype(v): k for k, v in TYPED_ARRAY_TAGS.items()}
V1_ENCODINGS = {"<": None, "lz4<": "lz4", "bs8-lz4<": "bslz4", "bs16-lz4<": "bslz4", "bs32-lz4<": "bslz4"}
MAX_BATCH = 1024
HC_EV_ANGSTROM = 12398.419843320026  # h c in eV angstrom: E (eV) = HC_EV_ANGSTROM / lambda (angstrom)
FRAME_DTYPES = ("uint8", "uint16", "uint32", "int16", "int32", "float32", "float64")
Part = bytes | bytearray | memoryview
Translation = tuple[float, float, float]
_NUMBER = (int, float)
_DTYPES = {name: np.dtype(name).newbyteorder("<") for name in FRAME_DTYPES}


class Protocol(StrEnum):
    NATIVE = "native"
    DECTRIS_V1 = "dectris-v1"
    DECTRIS_V2 = "dectris-v2"


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


def decode(parts: Sequence[Part]) -> Message:
    """Decode one multipart message of any supported format; raises a ``ProtocolError`` subclass."""
    if not parts:
        raise MalformedMessage("empty message")
    first = memoryview(parts[0])
    if first[:1] == b"{":
        head = _json(first)
        if "htype" in head:
            return _decode_v1(head, parts)
        if head.get("protocol") == NATIVE:
            return _decode_native(head, parts)
        raise UnknownType(f"JSON message of unknown kind (keys {sorted(head)[:6]})")
    if first[:3] == CBOR_MAGIC:
        if len(parts) != 1:
            raise MalformedMessage(f"stream v2 messages have one part, got {len(parts)}")
        return _decode_v2(first)
    raise UnknownEncoding(f"first part is neither JSON nor CBOR (starts {bytes(first[:4])!r})")


def _json(part: Part) -> dict[str, Any]:
    try:
        value = orjson.loads(part)
    except orjson.JSONDecodeError as exc:
        raise MalformedMessage(f"invalid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise MalformedMessage(f"JSON header must be an object, got {type(value).__name__}")
    return value


def _field(d: Mapping[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = d.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise MalformedMessage(f"{what}: field {key!r} missing or not {kind}")
    return value


def _position(value: Any, what: str) -> Translation | None:
    """A position field: None, or 2-3 finite numbers (metres) as an (x, y, z) tuple."""
    if value is None:
        return None
    ok = type(value) in (list, tuple) and 2 <= len(value) <= 3 and all(type(v) in _NUMBER for v in value)
    if not (ok and all(map(math.isfinite, value))):
        raise MalformedMessage(f"{what}: position_m must be 2 or 3 finite numbers, got {value!r}")
    return (float(value[0]), float(value[1]), float(value[2]) if len(value) == 3 else 0.0)


def _shape(value: Any, what: str) -> tuple[int, int]:
    if not (type(value) in (list, tuple) and len(value) == 2 and type(value[0]) is int and type(value[1]) is int):
        raise MalformedMessage(f"{what}: shape must be two positive integers, got {value!r}")
    if not (0 < value[0] < 65536 and 0 < value[1] < 65536):
        raise MalformedMessage(f"{what}: shape must be two integers in [1, 65535], got {value!r}")
    return value[0], value[1]


def _dtype(value: Any, what: str) -> np.dtype:
    dtype = _DTYPES.get(value) if type(value) is str else None
    if dtype is None:
        raise UnknownEncoding(f"{what}: dtype {value!r} is not one of {FRAME_DTYPES}")
    return dtype


def _array(buffer: Part, shape: tuple[int, int], dtype: np.dtype, scan_id: str, index: int) -> np.ndarray:
    """The frame as an array over ``buffer`` (no copy); a wrong byte count rejects it (``size``)."""
    nbytes = memoryview(buffer).nbytes
    if nbytes != shape[0] * shape[1] * dtype.itemsize:
        raise CorruptFrame(scan_id, index, "size", f"{nbytes} bytes for {shape} {dtype}")
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)


# -- native -------------------------------------------------------------------------------------


def _decode_native_frame(head: dict[str, Any], parts: Sequence[Part], scan_id: str) -> Frame:
    """The hot path: a frame header and its raw payload, checked field by field without copying the payload."""
    index = head.get("index")
    if type(index) is not int:
        raise MalformedMessage(f"native frame: field 'index' missing or not an integer, got {index!r}")
    if len(parts) != 2:
        raise CorruptFrame(scan_id, index, "parts", f"expected header + frame, got {len(parts)} parts")
    shape, dtype = _shape(head.get("shape"), "native frame"), _dtype(head.get("dtype"), "native frame")
    payload = parts[1]
    checksum = head.get("crc32c")
    if checksum is not None and crc32c.crc32c(payload) != checksum:
        raise CorruptFrame(scan_id, index, "checksum", "crc32c of the frame does not match its header")
    data = _array(payload, shape, dtype, scan_id, index)
    return Frame(scan_id, index, data, _position(head.get("position_m"), "native frame"), memoryview(payload).nbytes)


def _decode_native_batch(head: dict[str, Any], parts: Sequence[Part], scan_id: str) -> FrameBatch:
    """Frames ``index[k]`` in parts ``k + 1``; a payload that fails its checksum or size rejects that frame only."""
    indices = head.get("index")
    if not (type(indices) is list and 0 < len(indices) <= MAX_BATCH and all(type(i) is int for i in indices)):
        raise MalformedMessage(f"native frames: 'index' must be a list of 1 to {MAX_BATCH} integers")
    n = len(indices)
    positions, checksums = head.get("position_m"), head.get("crc32c")
    if positions is not None and not (type(positions) is list and len(positions) == n):
        raise MalformedMessage(f"native frames: 'position_m' must be null or a list of {n} positions")
    if checksums is not None and not (type(checksums) is list and len(checksums) == n):
        raise MalformedMessage(f"native frames: 'crc32c' must be null or a list of {n} checksums")
    shape, dtype = _shape(head.get("shape"), "native frames"), _dtype(head.get("dtype"), "native frames")
    if len(parts) != n + 1:
        detail = f"expected header + {n} frames, got {len(parts)} parts"
        return FrameBatch(scan_id, (), tuple(CorruptFrame(scan_id, i, "parts", detail) for i in indices))
    where = [_position(p, "native frames") for p in positions] if positions is not None else [None] * n
    frames, corrupt = [], []
    for k, index in enumerate(indices):
        payload = parts[k + 1]
        if checksums is not None and crc32c.crc32c(payload) != checksums[k]:
            corrupt.append(CorruptFrame(scan_id, index, "checksum", "crc32c of the frame does not match its header"))
            continue
        try:
            data = _array(payload, shape, dtype, scan_id, index)
        except CorruptFrame as exc:
            corrupt.append(exc)
            continue
        frames.append(Frame(scan_id, index, data, where[k], memoryview(payload).nbytes))
    return FrameBatch(scan_id, tuple(frames), tuple(corrupt))


def _decode_native_start(head: dict[str, Any], parts: Sequence[Part], scan_id: str) -> ScanStart:
    """The start header, then (each where its field is not null) the probe guess and the valid-pixel mask."""
    shape = _shape(head.get("shape"), "native start")
    extra = [name for name in ("probe", "valid") if head.get(name) is not None]
    if len(parts) != 1 + len(extra):
        raise MalformedMessage(f"native start: {len(parts)} parts for a header and {extra or 'nothing else'}")
    arrays: dict[str, np.ndarray] = {}
    for name, part in zip(extra, parts[1:], strict=True):
        spec = head[name]
        dtype = np.complex64 if name == "probe" else np.uint8
        values = (
            np.frombuffer(part, dtype=dtype).copy() if memoryview(part).nbytes % np.dtype(dtype).itemsize == 0 else None
        )
        want = spec.get("shape") if isinstance(spec, dict) else None
        if values is None or not isinstance(want, list) or int(np.prod(want)) != values.size:
            raise MalformedMessage(f"native start: {name} part does not hold shape {want} of {np.dtype(dtype)}")
        arrays[name] = values.reshape(want)
    valid = arrays.get("valid")
    if valid is not None and valid.shape != shape:
        raise MalformedMessage(f"native start: valid-pixel mask {valid.shape} vs frames {shape}")
    return ScanStart(
        scan_id,
        shape,
        str(_dtype(head.get("dtype"), "native start").name),
        float(_field(head, "energy_ev", (int, float), "native start")),
        float(_field(head, "distance_m", (int, float), "native start")),
        float(_field(head, "pixel_size_m", (int, float), "native start")),
        _propagation(head.get("propagation", "far")),
        head.get("expected_frames") if type(head.get("expected_frames")) is int else None,
        arrays.get("probe"),
        valid=None if valid is None else valid.astype(bool),
    )


def _decode_native(head: dict[str, Any], parts: Sequence[Part]) -> Message:
    if head.get("version") != NATIVE_VERSION:
        raise UnknownVersion(f"native protocol version {head.get('version')!r} (this decoder reads {NATIVE_VERSION})")
    kind = head.get("type")
    scan_id = head.get("scan_id")
    if type(scan_id) is not str:
        scan_id = str(_field(head, "scan_id", (str, int), f"native {kind}"))
    if kind == "frame":
        return _decode_native_frame(head, parts, scan_id)
    if kind == "frames":
        return _decode_native_batch(head, parts, scan_id)
    if kind == "position":
        pos = _position(head.get("position_m"), "native position")
        if pos is None:
            raise MalformedMessage("native position: position_m missing")
        return Position(scan_id, _field(head, "index", int, "native position"), pos)
    if kind == "start":
        return _decode_native_start(head, parts, scan_id)
    if kind == "end":
        sent = head.get("frames_sent")
        return ScanEnd(scan_id, sent if isinstance(sent, int) else None)
    raise UnknownType(f"native message type {kind!r}")


def _propagation(value: Any) -> Literal["far", "near"]:
    if value not in ("far", "near"):
        raise MalformedMessage(f"propagation must be 'far' or 'near', got {value!r}")
    return value


def _native(kind: str, scan_id: str, fields: dict[str, Any]) -> bytes:
    head = {"protocol": NATIVE, "version": NATIVE_VERSION, "type": kind, "scan_id": scan_id, **fields}
    return orjson.dumps(head)


def encode_native_start(start: ScanStart) -> list[Part]:
    """[header, probe guess (if any), valid-pixel mask (if any)]."""
    fields = {
        "shape": list(start.shape),
        "dtype": start.dtype,
        "energy_ev": start.energy_ev,
        "distance_m": start.distance_m,
        "pixel_size_m": start.pixel_size_m,
        "propagation": start.propagation,
        "expected_frames": start.expected_frames,
        "probe": None if start.probe is None else {"shape": list(start.probe.shape), "dtype": "complex64"},
        "valid": None if start.valid is None else {"shape": list(start.valid.shape), "dtype": "uint8"},
    }
    parts: list[Part] = [_native("start", start.scan_id, fields)]
    if start.probe is not None:
        parts.append(np.ascontiguousarray(start.probe, dtype=np.complex64).data)
    if start.valid is not None:
        parts.append(np.ascontiguousarray(start.valid, dtype=np.uint8).data)
    return parts


def encode_native_frame(scan_id: str, index: int, data: np.ndarray, position_m: np.ndarray | None) -> list[Part]:
    """[JSON header, raw frame]; the frame part is the array's own buffer (send with copy=False)."""
    data = np.ascontiguousarray(data)
    fields = {
        "index": index,
        "position_m": None if position_m is None else [float(v) for v in position_m],
        "dtype": data.dtype.name,
        "shape": list(data.shape),
        "crc32c": crc32c.crc32c(data.data),
    }
    return [_native("frame", scan_id, fields), data.data]


def encode_native_frames(
    scan_id: str, indices: Sequence[int], frames: Sequence[np.ndarray], positions_m: Sequence[np.ndarray] | None
) -> list[Part]:
    """[JSON header, frame 0, frame 1, ...]: one message for several frames of one shape and dtype."""
    data = [np.ascontiguousarray(f) for f in frames]
    if not data or len(data) != len(indices) or len({(f.shape, f.dtype) for f in data}) != 1:
        raise ValueError("encode_native_frames: needs one index per frame and frames of one shape and dtype")
    fields = {
        "index": [int(i) for i in indices],
        "position_m": None if positions_m is None else [[float(v) for v in p] for p in positions_m],
        "dtype": data[0].dtype.name,
        "shape": list(data[0].shape),
        "crc32c": [crc32c.crc32c(f.data) for f in data],
    }
    return [_native("frames", scan_id, fields), *(f.data for f in data)]


def encode_position(scan_id: str, index: int, position_m: np.ndarray) -> list[Part]:
    return [_native("position", scan_id, {"index": index, "position_m": [float(v) for v in position_m]})]


def encode_native_end(scan_id: str, frames_sent: int) -> list[Part]:
    return [_native("end", scan_id, {"frames_sent": frames_sent})]


# -- DECTRIS SIMPLON stream v1 ------------------------------------------------------------------


def _decode_v1(head: dict[str, Any], parts: Sequence[Part]) -> Message:
    kind = head["htype"]
    scan_id = str(_field(head, "series", int, kind))
    if kind == "dheader-1.0":
        if len(parts) < 2:
            raise MalformedMessage("dheader-1.0: needs header_detail 'basic' or 'all' (the detector config part)")
        cfg = _json(parts[1])
        shape = (_field(cfg, "y_pixels_in_detector", int, kind), _field(cfg, "x_pixels_in_detector", int, kind))
        n = cfg.get("nimages", 0) * cfg.get("ntrigger", 1)
        return ScanStart(
            scan_id,
            _shape(list(shape), kind),
            {8: "uint8", 16: "uint16", 32: "uint32"}.get(cfg.get("bit_depth_image"), "uint16"),
            float(_field(cfg, "incident_energy", (int, float), kind)),
            float(_field(cfg, "detector_distance", (int, float), kind)),
            float(_field(cfg, "x_pixel_size", (int, float), kind)),
            "far",
            int(n) if isinstance(n, int) and n > 0 else None,
            protocol=Protocol.DECTRIS_V1,
            valid=_v1_pixel_mask(parts[2:]),
        )
    if kind == "dimage-1.0":
        index = _field(head, "frame", int, kind)
        if len(parts) < 3:
            raise CorruptFrame(scan_id, index, "parts", f"dimage-1.0 needs 3-4 parts, got {len(parts)}")
        desc = _json(parts[1])
        if desc.get("htype") != "dimage_d-1.0":
            raise MalformedMessage(f"dimage-1.0: second part must be dimage_d-1.0, got {desc.get('htype')!r}")
        width, height = _shape(desc.get("shape"), "dimage_d-1.0")
        dtype, encoding = _dtype(desc.get("type"), "dimage_d-1.0"), desc.get("encoding")
        if encoding not in V1_ENCODINGS:
            raise UnknownEncoding(f"dimage_d-1.0: encoding {encoding!r} (known: {sorted(V1_ENCODINGS)})")
        blob = parts[2]
        digest = head.get("hash")
        if digest and hashlib.md5(blob).hexdigest() != digest:
            raise CorruptFrame(scan_id, index, "checksum", "md5 of the frame does not match its hash")
        data = _decompress(V1_ENCODINGS[encoding], blob, (height, width), dtype, scan_id, index, raw_lz4=True)
        return Frame(scan_id, index, data, None, len(blob))
    if kind == "dseries_end-1.0":
        return ScanEnd(scan_id)
    raise UnknownType(f"SIMPLON stream v1 htype {kind!r}")


def _v1_pixel_mask(parts: Sequence[Part]) -> np.ndarray | None:
    """The valid pixels (Y, X) from a ``dpixelmask-1.0`` part and its data (header_detail "all"), or None."""
    for k in range(len(parts) - 1):
        if memoryview(parts[k])[:1] != b"{":
            continue
        desc = _json(parts[k])
        if desc.get("htype") == "dpixelmask-1.0":
            width, height = _shape(desc.get("shape"), "dpixelmask-1.0")
            dtype = _dtype(desc.get("type", "uint32"), "dpixelmask-1.0")
            if memoryview(parts[k + 1]).nbytes != width * height * dtype.itemsize:
                raise MalformedMessage(
                    f"dpixelmask-1.0: {memoryview(parts[k + 1]).nbytes} bytes for {width} x {height}"
                )
            return np.frombuffer(parts[k + 1], dtype=dtype).reshape(height, width) == 0
    return None


def _decompress(
    algorithm: str | None,
    blob: Part,
    shape: tuple[int, int],
    dtype: np.dtype,
    scan_id: str,
    index: int,
    *,
    raw_lz4: bool = False,
) -> np.ndarray:
    nbytes = shape[0] * shape[1] * dtype.itemsize
    try:
        if algorithm == "bslz4":
            return codecs.decompress_bslz4(blob, shape, dtype)
        if algorithm == "lz4":
            raw = codecs.decompress_lz4_raw(blob, nbytes) if raw_lz4 else codecs.decompress_lz4_hdf5(blob, nbytes)
            return np.frombuffer(raw, dtype=dtype).reshape(shape)
    except codecs.CodecError as exc:
        raise CorruptFrame(scan_id, index, "decompression", str(exc)) from None
    if algorithm is None:
        return _array(blob, shape, dtype, scan_id, index)
    raise UnknownEncoding(f"compression {algorithm!r}")


def encode_v1_start(start: ScanStart) -> list[Part]:
    """dheader-1.0 and the detector config; with ``start.valid``, header_detail "all" and the pixel mask."""
    series = int(start.scan_id)
    config = {
        "x_pixels_in_detector": start.shape[1],
        "y_pixels_in_detector": start.shape[0],
        "bit_depth_image": np.dtype(start.dtype).itemsize * 8,
        "incident_energy": start.energy_ev,
        "detector_distance": start.distance_m,
        "x_pixel_size": start.pixel_size_m,
        "y_pixel_size": start.pixel_size_m,
        "nimages": start.expected_frames or 0,
        "ntrigger": 1,
    }
    detail = "basic" if start.valid is None else "all"
    head = {"htype": "dheader-1.0", "series": series, "header_detail": detail}
    if start.valid is None:
        return [orjson.dumps(head), orjson.dumps(config)]
    mask = (~start.valid).astype("<u4")
    desc = {"htype": "dpixelmask-1.0", "shape": [mask.shape[1], mask.shape[0]], "type": "uint32"}
    return [orjson.dumps(head), orjson.dumps(config), orjson.dumps(desc), mask.tobytes()]


def encode_v1_frame(scan_id: str, index: int, data: np.ndarray, compression: str | None) -> list[Part]:
    """dimage-1.0, dimage_d-1.0, the (compressed) frame, dconfig-1.0; ``compression`` None, 'lz4' or 'bslz4'."""
    data = np.ascontiguousarray(data)
    if compression == "bslz4":
        blob, encoding = codecs.compress_bslz4(data), f"bs{data.dtype.itemsize * 8}-lz4<"
    elif compression == "lz4":
        import lz4.block

        blob, encoding = lz4.block.compress(data.tobytes(), store_size=False), "lz4<"
    else:
        blob, encoding = data.data, "<"
    head = {"htype": "dimage-1.0", "series": int(scan_id), "frame": index, "hash": hashlib.md5(blob).hexdigest()}
    desc = {
        "htype": "dimage_d-1.0",
        "shape": [data.shape[1], data.shape[0]],
        "type": data.dtype.name,
        "encoding": encoding,
        "size": len(memoryview(blob).cast("B")),
    }
    tail = {"htype": "dconfig-1.0", "start_time": 0, "stop_time": 0, "real_time": 0}
    return [orjson.dumps(head), orjson.dumps(desc), blob, orjson.dumps(tail)]


def encode_v1_end(scan_id: str) -> list[Part]:
    return [orjson.dumps({"htype": "dseries_end-1.0", "series": int(scan_id)})]


# -- DECTRIS stream v2 (CBOR) --------------------------------------------------------------------


@dataclass(frozen=True)
class _Typed:
    """A CBOR typed array (RFC 8746) before decompression: dims (Y, X), dtype, payload."""

    dims: tuple[int, int]
    dtype: np.dtype
    payload: bytes
    algorithm: str | None


def _tag_hook(tag: cbor2.CBORTag, immutable: bool) -> Any:
    """cbor2 >= 6 tag hook (tag, immutable); tag contents arrive as tuples and frozendicts."""
    if tag.tag == TAG_COMPRESSED:
        if not (isinstance(tag.value, Sequence) and len(tag.value) == 3 and isinstance(tag.value[2], bytes)):
            raise MalformedMessage("tag 56500: expected [algorithm, modifier, bytes]")
        return ("compressed", str(tag.value[0]), tag.value[2])
    if tag.tag in TYPED_ARRAY_TAGS:
        return ("typed", np.dtype(TYPED_ARRAY_TAGS[tag.tag]), tag.value)
    if tag.tag == TAG_ARRAY:
        dims, typed = tag.value if isinstance(tag.value, Sequence) and len(tag.value) == 2 else (None, None)
        if not (isinstance(typed, tuple) and typed[0] == "typed"):
            raise MalformedMessage("tag 40: expected [dims, typed array]")
        payload = typed[2]
        algorithm = None
        if isinstance(payload, tuple) and payload[0] == "compressed":
            algorithm, payload = payload[1], payload[2]
        if not isinstance(payload, bytes):
            raise MalformedMessage("typed array: payload must be bytes")
        return _Typed(_shape(list(dims), "tag 40"), typed[1], payload, algorithm)
    raise UnknownType(f"stream v2: CBOR tag {tag.tag}")


def _decode_v2(first: memoryview) -> Message:
    try:
        msg = cbor2.loads(first, tag_hook=_tag_hook)
    except ProtocolError:
        raise
    except Exception as exc:  # cbor2 raises many types on garbage; all mean one thing here
        raise MalformedMessage(f"stream v2: invalid CBOR: {type(exc).__name__}: {exc}") from None
    if not isinstance(msg, Mapping):
        raise MalformedMessage("stream v2: message must be a map")
    kind = msg.get("type")
    scan_id = str(msg.get("series_unique_id") or _field(msg, "series_id", int, f"stream v2 {kind}"))
    user = msg.get("user_data") if isinstance(msg.get("user_data"), Mapping) else {}
    if kind == "start":
        n = msg.get("number_of_images")
        return ScanStart(
            scan_id,
            (_field(msg, "image_size_y", int, "start"), _field(msg, "image_size_x", int, "start")),
            str(msg.get("image_dtype", "uint32")),
            _v2_energy(msg),
            _v2_distance(msg),
            float(_field(msg, "pixel_size_x", (int, float), "start")),
            _propagation(user.get("propagation", "far")),
            n if isinstance(n, int) and n > 0 else None,
            protocol=Protocol.DECTRIS_V2,
            valid=_v2_pixel_mask(msg.get("pixel_mask")),
        )
    if kind == "image":
        index = _field(msg, "image_id", int, "image")
        channels = msg.get("data")
        if not isinstance(channels, Mapping) or not channels or not isinstance(next(iter(channels.values())), _Typed):
            raise CorruptFrame(scan_id, index, "parts", "image data must map a channel to a typed array")
        typed: _Typed = next(iter(channels.values()))
        data = _decompress(typed.algorithm, typed.payload, typed.dims, typed.dtype, scan_id, index)
        return Frame(scan_id, index, data, _position(user.get("position_m"), "image"), len(typed.payload))
    if kind == "end":
        return ScanEnd(scan_id)
    raise UnknownType(f"stream v2 message type {kind!r}")


def _number(value: Any) -> bool:
    return type(value) in _NUMBER and math.isfinite(value)


def _v2_energy(msg: Mapping[str, Any]) -> float:
    """``incident_energy`` (eV), else from ``incident_wavelength`` (angstrom)."""
    energy, wavelength = msg.get("incident_energy"), msg.get("incident_wavelength")
    if _number(energy) and energy > 0:
        return float(energy)
    if _number(wavelength) and wavelength > 0:
        return HC_EV_ANGSTROM / float(wavelength)
    raise MalformedMessage("stream v2 start: needs incident_energy (eV) or incident_wavelength (angstrom)")


def _v2_distance(msg: Mapping[str, Any]) -> float:
    """``detector_distance`` (m) where the sender adds it, else the z of ``detector_translation`` (m)."""
    distance, translation = msg.get("detector_distance"), msg.get("detector_translation")
    if _number(distance) and distance > 0:
        return float(distance)
    if isinstance(translation, Sequence) and len(translation) == 3 and _number(translation[2]) and translation[2] > 0:
        return float(translation[2])
    raise MalformedMessage("stream v2 start: needs detector_distance or detector_translation [x, y, z] (m)")


def _v2_pixel_mask(masks: Any) -> np.ndarray | None:
    """The valid pixels (Y, X) of the first channel's ``pixel_mask`` (nonzero: bad), or None."""
    if not isinstance(masks, Mapping) or not masks:
        return None
    typed = next(iter(masks.values()))
    if not isinstance(typed, _Typed):
        raise MalformedMessage("stream v2 start: pixel_mask must map a channel to a typed array")
    nbytes = typed.dims[0] * typed.dims[1] * typed.dtype.itemsize
    try:
        if typed.algorithm == "bslz4":
            mask = codecs.decompress_bslz4(typed.payload, typed.dims, typed.dtype)
        elif typed.algorithm == "lz4":
            mask = np.frombuffer(codecs.decompress_lz4_hdf5(typed.payload, nbytes), typed.dtype).reshape(typed.dims)
        elif len(typed.payload) == nbytes:
            mask = np.frombuffer(typed.payload, typed.dtype).reshape(typed.dims)
        else:
            raise codecs.CodecError(f"{len(typed.payload)} bytes for {typed.dims} {typed.dtype}")
    except codecs.CodecError as exc:
        raise MalformedMessage(f"stream v2 start: pixel_mask: {exc}") from None
    return mask == 0


def _typed(data: np.ndarray, compression: str | None) -> cbor2.CBORTag:
    data = np.ascontiguousarray(data).astype(np.dtype(data.dtype).newbyteorder("<"), copy=False)
    payload: Any = data.tobytes()
    if compression == "bslz4":
        payload = cbor2.CBORTag(TAG_COMPRESSED, ["bslz4", data.dtype.itemsize, codecs.compress_bslz4(data)])
    elif compression == "lz4":
        payload = cbor2.CBORTag(TAG_COMPRESSED, ["lz4", 0, codecs.compress_lz4_hdf5(data)])
    return cbor2.CBORTag(TAG_ARRAY, [list(data.shape), cbor2.CBORTag(TAG_OF_DTYPE[data.dtype], payload)])


def _cbor(msg: dict[str, Any]) -> list[Part]:
    return [CBOR_MAGIC + cbor2.dumps(msg)]


def encode_v2_start(start: ScanStart) -> list[Part]:
    """The start message with DECTRIS's field names (distance also as ``detector_translation`` z)."""
    msg = {
        "type": "start",
        "series_id": int(start.scan_id),
        "series_unique_id": start.scan_id,
        "image_size_x": start.shape[1],
        "image_size_y": start.shape[0],
        "image_dtype": start.dtype,
        "incident_energy": start.energy_ev,
        "incident_wavelength": HC_EV_ANGSTROM / start.energy_ev,
        "detector_distance": start.distance_m,
        "detector_translation": [0.0, 0.0, start.distance_m],
        "pixel_size_x": start.pixel_size_m,
        "pixel_size_y": start.pixel_size_m,
        "number_of_images": start.expected_frames or 0,
        "channels": ["threshold_1"],
        "pixel_mask_enabled": start.valid is not None,
        "user_data": {"propagation": start.propagation},
    }
    if start.valid is not None:
        msg["pixel_mask"] = {"threshold_1": _typed((~start.valid).astype("<u4"), None)}
    return _cbor(msg)


def encode_v2_frame(
    scan_id: str, index: int, data: np.ndarray, position_m: np.ndarray | None, compression: str | None
) -> list[Part]:
    user = {} if position_m is None else {"position_m": [float(v) for v in position_m]}
    msg = {
        "type": "image",
        "series_id": int(scan_id),
        "series_unique_id": scan_id,
        "image_id": index,
        "real_time": [1, 1000],
        "data": {"threshold_1": _typed(data, compression)},
        "user_data": user,
    }
    return _cbor(msg)


def encode_v2_end(scan_id: str) -> list[Part]:
    return _cbor({"type": "end", "series_id": int(scan_id), "series_unique_id": scan_id})
