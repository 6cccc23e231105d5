"""DECTRIS SIMPLON stream v1: JSON ``htype`` parts; frames carry no position (PROTOCOL.md)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import lz4.block
import numpy as np
import orjson

from workers.stream import codecs
from workers.stream.protocol import (
    ANY_FRAME,
    CorruptFrame,
    Expect,
    Frame,
    Header,
    MalformedMessage,
    Message,
    Part,
    Protocol,
    ScanEnd,
    ScanStart,
    UnknownEncoding,
    UnknownType,
    field,
    frame_array,
    frame_dtype,
    json_object,
    pixel_mask,
    saturation,
    shape,
    start_of,
)

ENCODINGS = {"<": None, "lz4<": "lz4", "bs8-lz4<": "bslz4", "bs16-lz4<": "bslz4", "bs32-lz4<": "bslz4"}


def decode(parts: Sequence[Part], head: Header | None, expect: Expect = ANY_FRAME) -> Message:
    """A SIMPLON v1 message whose parsed first part is ``head``; frames are checked against ``expect``."""
    if head is None:
        raise MalformedMessage("SIMPLON v1 message without its JSON header")
    kind = head["htype"]
    scan_id = str(field(head, "series", int, kind))
    if kind == "dheader-1.0":
        with start_of(scan_id):
            return _decode_start(parts, scan_id, expect)
    if kind == "dimage-1.0":
        return _decode_frame(head, parts, scan_id, expect)
    if kind == "dseries_end-1.0":
        return ScanEnd(scan_id)
    raise UnknownType(f"SIMPLON stream v1 htype {kind!r}")


def _decode_start(parts: Sequence[Part], scan_id: str, expect: Expect) -> ScanStart:
    kind = "dheader-1.0"
    if len(parts) < 2:
        raise MalformedMessage("dheader-1.0: needs header_detail 'basic' or 'all' (the detector config part)")
    cfg = json_object(parts[1])
    frames = shape([field(cfg, "y_pixels_in_detector", int, kind), field(cfg, "x_pixels_in_detector", int, kind)], kind)
    images, triggers = cfg.get("nimages"), cfg.get("ntrigger", 1)
    n = images * triggers if type(images) is int and type(triggers) is int else None
    dtype = {8: "uint8", 16: "uint16", 32: "uint32"}.get(cfg.get("bit_depth_image"), "uint16")
    return ScanStart(
        scan_id,
        frames,
        dtype,
        float(field(cfg, "incident_energy", (int, float), kind)),
        float(field(cfg, "detector_distance", (int, float), kind)),
        float(field(cfg, "x_pixel_size", (int, float), kind)),
        "far",
        int(n) if isinstance(n, int) and n > 0 else None,
        protocol=Protocol.DECTRIS_V1,
        valid=_pixel_mask(parts[2:], frames, expect),
        saturation=saturation(cfg.get("countrate_correction_count_cutoff"), cfg.get("bit_depth_readout"), dtype),
    )


def _pixel_mask(parts: Sequence[Part], frames: tuple[int, int], expect: Expect) -> np.ndarray | None:
    """The valid pixels (Y, X) from a ``dpixelmask-1.0`` part and its data (header_detail "all"), or None."""
    for head, data in zip(parts[0::2], parts[1::2], strict=False):  # (description, data) pairs
        desc = json_object(head)
        if desc.get("htype") == "dpixelmask-1.0":
            width, height = shape(desc.get("shape"), "dpixelmask-1.0")
            dtype = frame_dtype(desc.get("type", "uint32"), "dpixelmask-1.0")
            return pixel_mask(data, (height, width), dtype, None, frames, "dpixelmask-1.0", expect)
    return None


def _decode_frame(head: Header, parts: Sequence[Part], scan_id: str, expect: Expect) -> Frame:
    index = field(head, "frame", int, "dimage-1.0")
    if len(parts) < 3:
        raise CorruptFrame(scan_id, index, "parts", f"dimage-1.0 needs 3-4 parts, got {len(parts)}")
    desc = json_object(parts[1])
    if desc.get("htype") != "dimage_d-1.0":
        raise MalformedMessage(f"dimage-1.0: second part must be dimage_d-1.0, got {desc.get('htype')!r}")
    width, height = shape(desc.get("shape"), "dimage_d-1.0")
    dtype, encoding = frame_dtype(desc.get("type"), "dimage_d-1.0"), desc.get("encoding")
    if encoding not in ENCODINGS:
        raise UnknownEncoding(f"dimage_d-1.0: encoding {encoding!r} (known: {sorted(ENCODINGS)})")
    blob = parts[2]
    digest = head.get("hash")
    if digest and hashlib.md5(blob).hexdigest() != digest:
        raise CorruptFrame(scan_id, index, "checksum", "md5 of the frame does not match its hash")
    data = frame_array(blob, (height, width), dtype, ENCODINGS[encoding], scan_id, index, expect, raw_lz4=True)
    return Frame(scan_id, index, data, None, len(blob))


def encode_start(start: ScanStart) -> list[Part]:
    """dheader-1.0 and the detector config; with ``start.valid``, header_detail "all" and the pixel mask."""
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
    if start.saturation is not None:
        config["countrate_correction_count_cutoff"] = start.saturation
    detail = "basic" if start.valid is None else "all"
    head = {"htype": "dheader-1.0", "series": int(start.scan_id), "header_detail": detail}
    if start.valid is None:
        return [orjson.dumps(head), orjson.dumps(config)]
    mask = (~start.valid).astype("<u4")
    desc = {"htype": "dpixelmask-1.0", "shape": [mask.shape[1], mask.shape[0]], "type": "uint32"}
    return [orjson.dumps(head), orjson.dumps(config), orjson.dumps(desc), mask.tobytes()]


def encode_frame(
    scan_id: str, index: int, data: np.ndarray, position_m: Sequence[float] | None, compression: str | None = None
) -> list[Part]:
    """dimage-1.0, dimage_d-1.0, the (compressed) frame, dconfig-1.0; ``compression`` None, 'lz4' or 'bslz4'.
    v1 frames carry no position: ``position_m`` is ignored (it travels as a native position message)."""
    data = np.ascontiguousarray(data)
    if compression == "bslz4":
        blob, encoding = codecs.compress_bslz4(data), f"bs{data.dtype.itemsize * 8}-lz4<"
    elif compression == "lz4":
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


def encode_end(scan_id: str, frames_sent: int | None = None) -> list[Part]:
    """dseries_end-1.0 (it carries no frame count: ``frames_sent`` is ignored)."""
    return [orjson.dumps({"htype": "dseries_end-1.0", "series": int(scan_id)})]
