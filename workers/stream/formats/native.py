"""The native PtychoStream format (version 1): a JSON header, then raw parts (PROTOCOL.md)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import crc32c
import numpy as np
import orjson

from workers.fluorescence import is_element
from workers.stream.protocol import (
    ANY_FRAME,
    FRAME_DTYPES,
    NATIVE,
    CorruptFrame,
    Expect,
    Frame,
    FrameBatch,
    Header,
    MalformedMessage,
    Message,
    Part,
    Position,
    ScanEnd,
    ScanStart,
    UnknownType,
    UnknownVersion,
    checked_mask,
    field,
    frame_array,
    frame_dtype,
    position,
    propagation,
    shape,
    start_of,
)

VERSION = 1
MAX_BATCH = 1024
DTYPE_NAMES = {np.dtype(name): name for name in FRAME_DTYPES}  # ``dtype.name`` is a slow Python property


def decode(parts: Sequence[Part], head: Header | None, expect: Expect = ANY_FRAME) -> Message:
    """A native message whose parsed first part is ``head``; frames are checked against ``expect``."""
    if head is None:
        raise MalformedMessage("native message without its JSON header")
    if head.get("version") != VERSION:
        raise UnknownVersion(f"native protocol version {head.get('version')!r} (this decoder reads {VERSION})")
    kind = head.get("type")
    scan_id = head.get("scan_id")
    if type(scan_id) is not str:
        scan_id = str(field(head, "scan_id", (str, int), f"native {kind}"))
    if kind == "frame":
        return _decode_frame(head, parts, scan_id, expect)
    if kind == "frames":
        return _decode_batch(head, parts, scan_id, expect)
    if kind == "position":
        pos = position(head.get("position_m"), "native position")
        if pos is None:
            raise MalformedMessage("native position: position_m missing")
        return Position(scan_id, field(head, "index", int, "native position"), pos)
    if kind == "start":
        with start_of(scan_id):
            return _decode_start(head, parts, scan_id)
    if kind == "end":
        sent = head.get("frames_sent")
        return ScanEnd(scan_id, sent if isinstance(sent, int) else None)
    raise UnknownType(f"native message type {kind!r}")


def _decode_frame(head: Header, parts: Sequence[Part], scan_id: str, expect: Expect) -> Frame:
    """The hot path: a frame header and its raw payload, checked field by field without copying the payload
    (its size before its checksum: a short payload is a ``size`` reject)."""
    index = head.get("index")
    if type(index) is not int:
        raise MalformedMessage(f"native frame: field 'index' missing or not an integer, got {index!r}")
    if len(parts) != 2:
        raise CorruptFrame(scan_id, index, "parts", f"expected header + frame, got {len(parts)} parts")
    frame_shape, dtype = shape(head.get("shape"), "native frame"), frame_dtype(head.get("dtype"), "native frame")
    payload = parts[1]
    data = frame_array(payload, frame_shape, dtype, None, scan_id, index, expect)
    checksum = head.get("crc32c")
    if checksum is not None and crc32c.crc32c(payload) != checksum:
        raise CorruptFrame(scan_id, index, "checksum", "crc32c of the frame does not match its header")
    where = position(head.get("position_m"), "native frame")
    return Frame(scan_id, index, data, where, memoryview(payload).nbytes, _counts(head.get("xrf"), scan_id, index))


def _counts(value: Any, scan_id: str, index: int) -> dict[str, float] | None:
    """A frame's ``xrf`` field: null, or an object of element symbol -> counts (finite, >= 0)."""
    if value is None:
        return None
    ok = isinstance(value, dict) and all(
        type(k) is str and type(v) in (int, float) and math.isfinite(v) and v >= 0 for k, v in value.items()
    )
    if not ok or not value or not all(is_element(k) for k in value):
        raise CorruptFrame(scan_id, index, "xrf", f"xrf must map element symbols to counts >= 0, got {value!r}")
    return {k: float(v) for k, v in value.items()}


def _decode_batch(head: Header, parts: Sequence[Part], scan_id: str, expect: Expect) -> FrameBatch:
    """Frames ``index[k]`` in parts ``k + 1``; a payload that fails its size or checksum rejects that frame only."""
    indices = head.get("index")
    if not (type(indices) is list and 0 < len(indices) <= MAX_BATCH and all(type(i) is int for i in indices)):
        raise MalformedMessage(f"native frames: 'index' must be a list of 1 to {MAX_BATCH} integers")
    n = len(indices)
    positions, checksums, counts = head.get("position_m"), head.get("crc32c"), head.get("xrf")
    if positions is not None and not (type(positions) is list and len(positions) == n):
        raise MalformedMessage(f"native frames: 'position_m' must be null or a list of {n} positions")
    if counts is not None and not (type(counts) is list and len(counts) == n):
        raise MalformedMessage(f"native frames: 'xrf' must be null or a list of {n} objects")
    if checksums is not None and not (type(checksums) is list and len(checksums) == n):
        raise MalformedMessage(f"native frames: 'crc32c' must be null or a list of {n} checksums")
    frame_shape, dtype = shape(head.get("shape"), "native frames"), frame_dtype(head.get("dtype"), "native frames")
    if len(parts) != n + 1:
        detail = f"expected header + {n} frames, got {len(parts)} parts"
        return FrameBatch(scan_id, (), tuple(CorruptFrame(scan_id, i, "parts", detail) for i in indices))
    where = [position(p, "native frames") for p in positions] if positions is not None else [None] * n
    frames, corrupt = [], []
    for k, index in enumerate(indices):
        payload = parts[k + 1]
        try:
            data = frame_array(payload, frame_shape, dtype, None, scan_id, index, expect)
        except CorruptFrame as exc:
            corrupt.append(exc)
            continue
        if checksums is not None and crc32c.crc32c(payload) != checksums[k]:
            corrupt.append(CorruptFrame(scan_id, index, "checksum", "crc32c of the frame does not match its header"))
            continue
        try:
            xrf = _counts(None if counts is None else counts[k], scan_id, index)
        except CorruptFrame as exc:
            corrupt.append(exc)
            continue
        frames.append(Frame(scan_id, index, data, where[k], memoryview(payload).nbytes, xrf))
    return FrameBatch(scan_id, tuple(frames), tuple(corrupt))


def _decode_start(head: Header, parts: Sequence[Part], scan_id: str) -> ScanStart:
    """The start header, then (each where its field is not null) the probe guess and the valid-pixel mask."""
    frame_shape = shape(head.get("shape"), "native start")
    extra = [name for name in ("probe", "valid") if head.get(name) is not None]
    if len(parts) != 1 + len(extra):
        raise MalformedMessage(f"native start: {len(parts)} parts for a header and {extra or 'nothing else'}")
    arrays: dict[str, np.ndarray] = {}
    for name, part in zip(extra, parts[1:], strict=True):
        spec, dtype = head[name], np.dtype(np.complex64 if name == "probe" else np.uint8)
        want = spec.get("shape") if isinstance(spec, dict) else None
        dims = 3 if name == "probe" else 2
        if not (type(want) is list and len(want) == dims and all(type(n) is int and n > 0 for n in want)):
            raise MalformedMessage(f"native start: {name} shape must be {dims} positive integers, got {want!r}")
        if memoryview(part).nbytes != int(np.prod(want)) * dtype.itemsize:
            raise MalformedMessage(f"native start: {name} part does not hold shape {want} of {dtype}")
        arrays[name] = np.frombuffer(part, dtype=dtype).reshape(want).copy()
    valid = arrays.get("valid")
    expected, saturation = head.get("expected_frames"), head.get("saturation")
    return ScanStart(
        scan_id,
        frame_shape,
        str(frame_dtype(head.get("dtype"), "native start").name),
        float(field(head, "energy_ev", (int, float), "native start")),
        float(field(head, "distance_m", (int, float), "native start")),
        float(field(head, "pixel_size_m", (int, float), "native start")),
        propagation(head.get("propagation", "far")),
        expected,
        arrays.get("probe"),
        valid=None if valid is None else checked_mask(valid.astype(bool), frame_shape, "native start"),
        saturation=saturation,
    )


def _header(kind: str, scan_id: str, fields: dict[str, Any]) -> bytes:
    return orjson.dumps({"protocol": NATIVE, "version": VERSION, "type": kind, "scan_id": scan_id, **fields})


def encode_start(start: ScanStart) -> list[Part]:
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
        "saturation": start.saturation,
    }
    parts: list[Part] = [_header("start", start.scan_id, fields)]
    if start.probe is not None:
        parts.append(np.ascontiguousarray(start.probe, dtype=np.complex64).data)
    if start.valid is not None:
        parts.append(np.ascontiguousarray(start.valid, dtype=np.uint8).data)
    return parts


def encode_frame(
    scan_id: str,
    index: int,
    data: np.ndarray,
    position_m: Sequence[float] | None,
    compression: str | None = None,
    *,
    fluorescence: Mapping[str, float] | None = None,
) -> list[Part]:
    """[JSON header, raw frame]; the frame part is the array's own buffer (send with copy=False).
    Native frames travel uncompressed: ``compression`` (the DECTRIS formats') is ignored.
    ``fluorescence``: the frame's counts by element symbol (header field ``xrf``)."""
    data = np.ascontiguousarray(data)
    fields = {
        "index": index,
        "position_m": None if position_m is None else list(map(float, position_m)),
        "dtype": DTYPE_NAMES.get(data.dtype) or data.dtype.name,
        "shape": list(data.shape),
        "crc32c": crc32c.crc32c(data.data),
    }
    if fluorescence is not None:
        fields["xrf"] = {k: float(v) for k, v in fluorescence.items()}
    return [_header("frame", scan_id, fields), data.data]


def encode_frames(
    scan_id: str,
    indices: Sequence[int],
    frames: Sequence[np.ndarray],
    positions_m: Sequence[Sequence[float]] | None,
    fluorescence: Sequence[Mapping[str, float]] | None = None,
) -> list[Part]:
    """[JSON header, frame 0, frame 1, ...]: one message for several frames of one shape and dtype
    (``fluorescence``: each frame's counts by element symbol, header field ``xrf``)."""
    data = [np.ascontiguousarray(f) for f in frames]
    if not data or len(data) != len(indices) or len({(f.shape, f.dtype) for f in data}) != 1:
        raise ValueError("encode_frames: needs one index per frame and frames of one shape and dtype")
    fields = {
        "index": [int(i) for i in indices],
        "position_m": None if positions_m is None else [list(map(float, p)) for p in positions_m],
        "dtype": DTYPE_NAMES.get(data[0].dtype) or data[0].dtype.name,
        "shape": list(data[0].shape),
        "crc32c": [crc32c.crc32c(f.data) for f in data],
    }
    if fluorescence is not None:
        fields["xrf"] = [{k: float(v) for k, v in counts.items()} for counts in fluorescence]
    return [_header("frames", scan_id, fields), *(f.data for f in data)]


def encode_position(scan_id: str, index: int, position_m: Sequence[float]) -> list[Part]:
    """A position message (any format's separate position stream)."""
    return [_header("position", scan_id, {"index": index, "position_m": [float(v) for v in position_m]})]


def encode_end(scan_id: str, frames_sent: int | None = None) -> list[Part]:
    return [_header("end", scan_id, {"frames_sent": frames_sent})]
