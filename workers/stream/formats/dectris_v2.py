"""DECTRIS stream v2: one CBOR message per part, arrays as RFC 8746 typed arrays (PROTOCOL.md)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import cbor2
import numpy as np

from workers import units
from workers.stream import codecs
from workers.stream.protocol import (
    ANY_FRAME,
    CBOR_MAGIC,
    CorruptFrame,
    Expect,
    Frame,
    Header,
    MalformedMessage,
    Message,
    Part,
    Protocol,
    ProtocolError,
    ScanEnd,
    ScanStart,
    UnknownType,
    field,
    frame_array,
    number,
    pixel_mask,
    position,
    propagation,
    saturation,
    shape,
    start_of,
)

TAG_ARRAY, TAG_COMPRESSED = 40, 56500
TYPED_ARRAY_TAGS = {64: "u1", 69: "<u2", 70: "<u4", 71: "<u8", 72: "i1", 77: "<i2", 78: "<i4", 85: "<f4", 86: "<f8"}
TAG_OF_DTYPE = {np.dtype(v): k for k, v in TYPED_ARRAY_TAGS.items()}


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
        return _Typed(shape(list(dims), "tag 40"), typed[1], payload, algorithm)
    raise UnknownType(f"stream v2: CBOR tag {tag.tag}")


def decode(parts: Sequence[Part], head: Header | None = None, expect: Expect = ANY_FRAME) -> Message:
    """A stream v2 message (one part: the CBOR self-describe tag, then a map); frames are checked against
    ``expect``."""
    if len(parts) != 1:
        raise MalformedMessage(f"stream v2 messages have one part, got {len(parts)}")
    try:
        msg = cbor2.loads(memoryview(parts[0]), tag_hook=_tag_hook)
    except ProtocolError:
        raise
    except Exception as exc:  # cbor2 raises many types on garbage; all mean one thing here
        raise MalformedMessage(f"stream v2: invalid CBOR: {type(exc).__name__}: {exc}") from None
    if not isinstance(msg, Mapping):
        raise MalformedMessage("stream v2: message must be a map")
    kind = msg.get("type")
    scan_id = str(msg.get("series_unique_id") or field(msg, "series_id", int, f"stream v2 {kind}"))
    user = msg.get("user_data") if isinstance(msg.get("user_data"), Mapping) else {}
    if kind == "start":
        with start_of(scan_id):
            return _decode_start(msg, scan_id, user, expect)
    if kind == "image":
        index = field(msg, "image_id", int, "image")
        channels = msg.get("data")
        if not isinstance(channels, Mapping) or not channels or not isinstance(next(iter(channels.values())), _Typed):
            raise CorruptFrame(scan_id, index, "parts", "image data must map a channel to a typed array")
        typed: _Typed = next(iter(channels.values()))
        data = frame_array(typed.payload, typed.dims, typed.dtype, typed.algorithm, scan_id, index, expect)
        return Frame(scan_id, index, data, position(user.get("position_m"), "image"), len(typed.payload))
    if kind == "end":
        return ScanEnd(scan_id)
    raise UnknownType(f"stream v2 message type {kind!r}")


def _decode_start(msg: Mapping[str, Any], scan_id: str, user: Mapping[str, Any], expect: Expect) -> ScanStart:
    frames = shape([field(msg, "image_size_y", int, "start"), field(msg, "image_size_x", int, "start")], "start")
    n = msg.get("number_of_images")
    dtype = str(msg.get("image_dtype", "uint32"))
    return ScanStart(
        scan_id,
        frames,
        dtype,
        _energy(msg),
        _distance(msg),
        float(field(msg, "pixel_size_x", (int, float), "start")),
        propagation(user.get("propagation", "far")),
        n if isinstance(n, int) and n > 0 else None,
        protocol=Protocol.DECTRIS_V2,
        valid=_pixel_mask(msg.get("pixel_mask"), frames, expect),
        saturation=saturation(msg.get("saturation_value"), msg.get("bit_depth_readout"), dtype),
    )


def _energy(msg: Mapping[str, Any]) -> float:
    """``incident_energy`` (eV), else from ``incident_wavelength`` (angstrom)."""
    energy, wavelength = msg.get("incident_energy"), msg.get("incident_wavelength")
    if number(energy) and energy > 0:
        return float(energy)
    if number(wavelength) and wavelength > 0:
        return units.energy_ev_from_angstrom(float(wavelength))
    raise MalformedMessage("stream v2 start: needs incident_energy (eV) or incident_wavelength (angstrom)")


def _distance(msg: Mapping[str, Any]) -> float:
    """``detector_distance`` (m) where the sender adds it, else the z of ``detector_translation`` (m)."""
    distance, translation = msg.get("detector_distance"), msg.get("detector_translation")
    if number(distance) and distance > 0:
        return float(distance)
    if isinstance(translation, Sequence) and len(translation) == 3 and number(translation[2]) and translation[2] > 0:
        return float(translation[2])
    raise MalformedMessage("stream v2 start: needs detector_distance or detector_translation [x, y, z] (m)")


def _pixel_mask(masks: Any, frames: tuple[int, int], expect: Expect) -> np.ndarray | None:
    """The valid pixels (Y, X) of the first channel's ``pixel_mask`` (nonzero: bad), or None."""
    if not isinstance(masks, Mapping) or not masks:
        return None
    typed = next(iter(masks.values()))
    if not isinstance(typed, _Typed):
        raise MalformedMessage("stream v2 start: pixel_mask must map a channel to a typed array")
    what = "stream v2 start: pixel_mask"
    return pixel_mask(typed.payload, typed.dims, typed.dtype, typed.algorithm, frames, what, expect)


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


def encode_start(start: ScanStart) -> list[Part]:
    """The start message with DECTRIS's field names (distance also as ``detector_translation`` z)."""
    msg = {
        "type": "start",
        "series_id": int(start.scan_id),
        "series_unique_id": start.scan_id,
        "image_size_x": start.shape[1],
        "image_size_y": start.shape[0],
        "image_dtype": start.dtype,
        "incident_energy": start.energy_ev,
        "incident_wavelength": units.angstrom_from_energy_ev(start.energy_ev),
        "detector_distance": start.distance_m,
        "detector_translation": [0.0, 0.0, start.distance_m],
        "pixel_size_x": start.pixel_size_m,
        "pixel_size_y": start.pixel_size_m,
        "number_of_images": start.expected_frames or 0,
        "channels": ["threshold_1"],
        "pixel_mask_enabled": start.valid is not None,
        "user_data": {"propagation": start.propagation},
    }
    if start.saturation is not None:
        msg["saturation_value"] = start.saturation
    if start.valid is not None:
        msg["pixel_mask"] = {"threshold_1": _typed((~start.valid).astype("<u4"), None)}
    return _cbor(msg)


def encode_frame(
    scan_id: str, index: int, data: np.ndarray, position_m: Sequence[float] | None, compression: str | None = None
) -> list[Part]:
    """An image message; ``compression`` None, 'lz4' or 'bslz4'; the position in ``user_data``."""
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


def encode_end(scan_id: str, frames_sent: int | None = None) -> list[Part]:
    """The end message (it carries no frame count: ``frames_sent`` is ignored)."""
    return _cbor({"type": "end", "series_id": int(scan_id), "series_unique_id": scan_id})
