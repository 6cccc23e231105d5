"""The pure decoder: recorded messages of every format, round trips, specific errors, garbage."""

from __future__ import annotations

import json
from pathlib import Path

import cbor2
import numpy as np
import pytest

from workers.stream import codecs
from workers.stream import protocol as p
from workers.stream.formats import FORMATS, decode, dectris_v1, dectris_v2, native

DATA = Path(__file__).parents[2] / "data" / "stream"
FRAME = np.arange(48, dtype=np.uint16).reshape(6, 8)
POSITION = np.array([1.5e-6, -2.5e-6, 0.0])


def recorded(name: str) -> list[bytes]:
    with np.load(DATA / f"{name}.npz") as z:
        return [z[f"part_{k}"].tobytes() for k in range(len(z.files))]


@pytest.mark.parametrize("fmt", ["native", "dectris_v1", "dectris_v2"])
def test_recorded_scan_messages_decode(fmt: str) -> None:
    start = decode(recorded(f"{fmt}_start"))
    assert isinstance(start, p.ScanStart)
    assert (start.scan_id, start.shape, start.dtype, start.expected_frames) == ("7", (6, 8), "uint16", 3)
    assert (start.energy_ev, start.distance_m, start.pixel_size_m) == (8000.0, 2.0, 75e-6)
    assert start.protocol == p.Protocol(fmt.replace("_", "-"))
    end = decode(recorded(f"{fmt}_end"))
    assert isinstance(end, p.ScanEnd) and end.scan_id == "7"


@pytest.mark.parametrize("fmt", ["native", "dectris_v1", "dectris_v2"])
def test_recorded_start_carries_the_detector_pixel_mask(fmt: str) -> None:
    start = decode(recorded(f"{fmt}_start_mask"))
    assert isinstance(start, p.ScanStart) and start.valid is not None
    assert start.valid.shape == (6, 8) and sorted(zip(*np.nonzero(~start.valid), strict=True)) == [(2, 5), (4, 0)]
    assert decode(recorded(f"{fmt}_start")).valid is None


def test_stream_v2_start_reads_dectris_field_names() -> None:
    """DECTRIS's start message: pixel_size_x, detector_translation z as the distance, energy from the wavelength."""
    msg = {"type": "start", "series_id": 3, "image_size_x": 8, "image_size_y": 6, "pixel_size_x": 75e-6}
    msg |= {"incident_wavelength": 1.0, "detector_translation": [0.01, -0.02, 5.5], "number_of_images": 10}
    start = decode([p.CBOR_MAGIC + cbor2.dumps(msg)])
    assert isinstance(start, p.ScanStart)
    assert (start.scan_id, start.shape, start.pixel_size_m, start.distance_m) == ("3", (6, 8), 75e-6, 5.5)
    assert start.energy_ev == pytest.approx(12398.42, rel=1e-6) and start.expected_frames == 10
    del msg["detector_translation"]
    with pytest.raises(p.MalformedMessage, match="detector_distance"):
        decode([p.CBOR_MAGIC + cbor2.dumps(msg)])


@pytest.mark.parametrize(
    "name",
    ["native_frame", "dectris_v1_frame", "dectris_v1_frame_bslz4", "dectris_v1_frame_lz4"]
    + ["dectris_v2_frame", "dectris_v2_frame_bslz4", "dectris_v2_frame_lz4"],
)
def test_recorded_frames_decode_to_the_frame(name: str) -> None:
    frame = decode(recorded(name))
    assert isinstance(frame, p.Frame)
    assert (frame.scan_id, frame.index) == ("7", 1)
    np.testing.assert_array_equal(frame.data, FRAME)
    if name.startswith("dectris_v1"):
        assert frame.position_m is None  # v1 frames carry no position: the position stream does
    else:
        np.testing.assert_array_equal(frame.position_m, POSITION)


def test_recorded_frames_batch() -> None:
    batch = decode(recorded("native_frames"))
    assert isinstance(batch, p.FrameBatch) and not batch.corrupt
    assert [(f.scan_id, f.index) for f in batch.frames] == [("7", 1), ("7", 2)]
    np.testing.assert_array_equal(batch.frames[1].data, FRAME + 1)
    np.testing.assert_array_equal(batch.frames[1].position_m, 2 * POSITION)


def test_recorded_position() -> None:
    pos = decode(recorded("native_position"))
    assert isinstance(pos, p.Position) and pos.index == 1
    np.testing.assert_array_equal(pos.position_m, POSITION)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32", "float32"])
@pytest.mark.parametrize("compression", [None, "lz4", "bslz4"])
def test_round_trip_every_format(dtype: str, compression: str | None) -> None:
    frame = np.random.default_rng(0).integers(0, 200, (64, 48)).astype(dtype)
    for parts in (
        native.encode_frame("3", 9, frame, POSITION),
        dectris_v1.encode_frame("3", 9, frame, None, compression),
        dectris_v2.encode_frame("3", 9, frame, POSITION, compression),
    ):
        out = decode([bytes(memoryview(x).cast("B")) for x in parts])
        assert isinstance(out, p.Frame) and out.index == 9 and out.data.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(out.data, frame)


def test_native_start_carries_the_probe_guess() -> None:
    probe = (np.arange(2 * 4 * 4) * (1 + 1j)).astype(np.complex64).reshape(2, 4, 4)
    start = p.ScanStart("1", (4, 4), "float32", 9000.0, 1.0, 5e-5, "near", None, probe)
    out = decode(native.encode_start(start))
    assert isinstance(out, p.ScanStart) and out.propagation == "near"
    np.testing.assert_array_equal(out.probe, probe)


def native_header(**fields: object) -> list[bytes]:
    head = {"protocol": "ptychostream", "version": 1, "type": "end", "scan_id": "1", **fields}
    return [json.dumps(head).encode()]


def test_specific_errors() -> None:
    with pytest.raises(p.UnknownVersion):
        decode(native_header(version=2))
    with pytest.raises(p.UnknownType):
        decode(native_header(type="calibration"))
    with pytest.raises(p.UnknownType):
        decode([json.dumps({"htype": "dpixelmask-1.0", "series": 1}).encode()])
    with pytest.raises(p.UnknownEncoding):
        decode([b"\x00\x01binary"])
    parts = recorded("dectris_v1_frame")
    desc = json.loads(parts[1])
    desc["encoding"] = "bs16-zstd<"
    with pytest.raises(p.UnknownEncoding):
        decode([parts[0], json.dumps(desc).encode(), parts[2]])
    with pytest.raises(p.UnknownType):
        decode([p.CBOR_MAGIC + cbor2.dumps({"type": "calibration", "series_id": 1})])
    with pytest.raises(p.MalformedMessage):
        decode(native_header(scan_id=None))
    with pytest.raises(p.MalformedMessage):
        decode([b"{not json"])


def test_corrupt_payload_names_the_frame() -> None:
    head, body = recorded("native_frame")
    with pytest.raises(p.CorruptFrame) as err:
        decode([head, body[:-2] + b"\xff\xff"])
    assert (err.value.index, err.value.reason) == (1, "checksum")
    message = bytearray(recorded("dectris_v2_frame_bslz4")[0])
    blob = codecs.compress_bslz4(FRAME)
    at = message.find(blob) + 12  # past the HDF5-framing header: the first block's size
    message[at : at + 4] = b"\xff\xff\xff\x00"
    with pytest.raises(p.CorruptFrame) as err:
        decode([bytes(message)])
    assert (err.value.index, err.value.reason) == (1, "decompression")


def test_garbage_raises_only_protocol_errors() -> None:
    """Random bytes, mutated recorded messages and shuffled parts: decode raises ProtocolError or decodes."""
    rng = np.random.default_rng(1)
    names = ("native_start", "native_frame", "native_frames", "dectris_v1_frame_bslz4", "dectris_v2_frame_lz4")
    seeds = [recorded(n) for n in names]
    seeds += [recorded("dectris_v1_start"), recorded("dectris_v2_start")]
    for trial in range(3000):
        base = [bytearray(x) for x in seeds[trial % len(seeds)]]
        kind = trial % 4
        if kind == 0:
            parts = [rng.bytes(int(rng.integers(0, 64))) for _ in range(int(rng.integers(1, 5)))]
        elif kind == 1:
            for part in base:
                for at in rng.integers(0, max(len(part), 1), size=3):
                    if len(part):
                        part[at] = int(rng.integers(0, 256))
            parts = [bytes(x) for x in base]
        elif kind == 2:
            parts = [bytes(x[: int(rng.integers(0, len(x) + 1))]) for x in base]
        else:
            parts = [bytes(base[int(k)]) for k in rng.integers(0, len(base), size=int(rng.integers(1, 5)))]
        try:
            decode(parts)
        except p.ProtocolError:
            pass


def test_frames_batch_round_trips_and_rejects_only_its_corrupt_frames() -> None:
    frames = [np.full((6, 8), k, np.uint16) for k in range(4)]
    positions = [POSITION * k for k in range(4)]
    parts = [bytes(memoryview(x).cast("B")) for x in native.encode_frames("3", [5, 6, 7, 9], frames, positions)]
    out = decode(parts)
    assert isinstance(out, p.FrameBatch) and not out.corrupt
    assert [f.index for f in out.frames] == [5, 6, 7, 9]
    for f, want, where in zip(out.frames, frames, positions, strict=True):
        np.testing.assert_array_equal(f.data, want)
        np.testing.assert_array_equal(f.position_m, where)
    parts[2] = b"\x00" + parts[2][1:]  # frame 6: checksum
    parts[4] = parts[4][:-2]  # frame 9: size (checked before its checksum, which no longer matches either)
    out = decode(parts)
    assert isinstance(out, p.FrameBatch) and [f.index for f in out.frames] == [5, 7]
    assert [(c.index, c.reason) for c in out.corrupt] == [(6, "checksum"), (9, "size")]
    out = decode(parts[:3])
    assert isinstance(out, p.FrameBatch) and not out.frames and {c.reason for c in out.corrupt} == {"parts"}


@pytest.mark.parametrize(
    "fields",
    [{"index": []}, {"index": [1, "2"]}, {"index": [1, 2], "position_m": [[0, 0]]}, {"index": [1], "crc32c": 5}],
)
def test_frames_batch_with_a_bad_header_is_malformed(fields: dict) -> None:
    head = {"scan_id": "3", "dtype": "uint16", "shape": [2, 2], **fields}
    with pytest.raises(p.MalformedMessage):
        decode([json.dumps({"protocol": "ptychostream", "version": 1, "type": "frames", **head}).encode(), b"\0" * 8])


def test_every_format_refuses_a_pixel_mask_of_the_wrong_shape() -> None:
    """The three start decoders agree: a mask that does not match the frames makes the start malformed."""
    start = p.ScanStart("7", (6, 8), "uint16", 8000.0, 2.0, 75e-6, "far", 3)
    object.__setattr__(start, "valid", np.ones((8, 6), bool))  # a sender's start that ScanStart itself refuses
    for fmt in FORMATS.values():
        parts = [bytes(memoryview(x).cast("B")) for x in fmt.encode_start(start)]
        with pytest.raises(p.MalformedMessage, match=r"pixel mask of shape \(8, 6\) does not match frames"):
            decode(parts)


def test_the_format_table_covers_every_protocol_and_round_trips() -> None:
    assert set(FORMATS) == set(p.Protocol)
    start = p.ScanStart("7", (6, 8), "uint16", 8000.0, 2.0, 75e-6, "far", 3)
    for kind, fmt in FORMATS.items():
        assert p.detect(fmt.encode_start(start))[0] == kind
        out = decode(fmt.encode_start(start))
        assert isinstance(out, p.ScanStart) and out.protocol == kind and out.shape == (6, 8)
        frame = decode(fmt.encode_frame("7", 2, FRAME, POSITION, "bslz4"))
        assert isinstance(frame, p.Frame) and frame.index == 2
        np.testing.assert_array_equal(frame.data, FRAME)
        assert (frame.position_m is not None) == fmt.positions_in_frames
        assert isinstance(decode(fmt.encode_end("7", 3)), p.ScanEnd)


def test_v1_start_reads_the_mask_after_binary_parts_that_look_like_json() -> None:
    """header_detail "all": a flatfield whose data begins with '{' comes before the pixel mask; a null nimages."""
    parts = recorded("dectris_v1_start_mask")
    config = json.loads(parts[1]) | {"nimages": None}
    flat_desc = json.dumps({"htype": "dflatfield-1.0", "shape": [8, 6], "type": "float32"}).encode()
    flat = b"{" + bytes(6 * 8 * 4 - 1)
    start = decode([parts[0], json.dumps(config).encode(), flat_desc, flat, *parts[2:]])
    assert isinstance(start, p.ScanStart) and start.valid is not None and start.expected_frames is None
    assert sorted(zip(*np.nonzero(~start.valid), strict=True)) == [(2, 5), (4, 0)]


@pytest.mark.parametrize("shape", [(7, 9), (1, 1), (64, 129)])
def test_bslz4_round_trips_odd_sizes_and_refuses_bad_block_sizes(shape: tuple[int, int]) -> None:
    """Every block size the walk checks (full blocks, a last multiple of 8, a raw leftover) as bitshuffle writes
    them; a block that declares more than the data holds, or a truncated body, is a CodecError (never a read past
    the buffer)."""
    frame = np.random.default_rng(0).integers(0, 300, shape).astype(np.uint16)
    for block in (0, 8, 64):
        blob = codecs.compress_bslz4(frame, block)
        np.testing.assert_array_equal(codecs.decompress_bslz4(blob, shape, frame.dtype), frame)
    body = bytearray(codecs.compress_bslz4(frame, 8))
    with pytest.raises(codecs.CodecError):
        codecs.decompress_bslz4(bytes(body[:-1]), shape, frame.dtype)
    body[12:16] = (len(body)).to_bytes(4, "big")
    with pytest.raises(codecs.CodecError):
        codecs.decompress_bslz4(bytes(body), shape, frame.dtype)
