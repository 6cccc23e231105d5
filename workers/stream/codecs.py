"""Frame payloads: the compressions of the DECTRIS streams, decoded by well-kept libraries (``bitshuffle``,
``lz4``), and ``decode_array``, the one place a payload (raw or compressed) becomes an array.

Both compressions use the HDF5-filter framing: a 12-byte header (uint64 big-endian uncompressed size,
uint32 big-endian block size in bytes), then per block a uint32 big-endian compressed size
and an LZ4 block. Bitshuffle-LZ4 additionally bit-transposes each block (element size given).
"""

from __future__ import annotations

import ctypes
import glob
import os
import struct

import bitshuffle
import lz4.block
import numpy as np

OPENMP_LIBRARIES = (
    *glob.glob(os.path.join(os.path.dirname(bitshuffle.__file__), "..", "bitshuffle.libs", "libgomp*")),
    "libgomp.so.1",
)


def serial_openmp() -> None:
    """Run bitshuffle's OpenMP single-threaded on the calling thread (call it on decoding threads).

    bitshuffle parallelises over 8 KiB blocks; for a frame of a few blocks the thread wake-ups
    cost far more than the work (measured on a busy 2-core machine: 35-60 us per 128x128
    frame on one thread, 0.4-12 ms with two). Its symbols may bind to its bundled libgomp or to
    one loaded earlier (torch's), so both are set; the setting is per thread, other threads
    (the engine's) keep theirs.
    """
    for name in OPENMP_LIBRARIES:
        try:
            ctypes.CDLL(name, mode=os.RTLD_NOLOAD).omp_set_num_threads(1)
        except (OSError, AttributeError):
            continue  # that runtime is not loaded in this process: nothing to set


HEADER = struct.Struct(">QI")
BLOCK = struct.Struct(">I")


class CodecError(ValueError):
    """A buffer that does not decode (corrupt, truncated, or the wrong size)."""


class UnknownCodec(CodecError):
    """A compression algorithm this module does not know."""


def decode_array(
    buffer: bytes | bytearray | memoryview,
    shape: tuple[int, int],
    dtype: np.dtype,
    algorithm: str | None,
    *,
    raw_lz4: bool = False,
) -> np.ndarray:
    """``buffer`` as an array ``shape`` of ``dtype``: as it is (no copy; its size must fit) where ``algorithm``
    is None, else decompressed: 'bslz4', or 'lz4' (HDF5 framing; a bare block with ``raw_lz4``)."""
    nbytes = shape[0] * shape[1] * dtype.itemsize
    if algorithm is None:
        if memoryview(buffer).nbytes != nbytes:
            raise CodecError(f"{memoryview(buffer).nbytes} bytes for {shape} {dtype}")
        return np.frombuffer(buffer, dtype=dtype).reshape(shape)
    if algorithm == "bslz4":
        return decompress_bslz4(buffer, shape, dtype)
    if algorithm == "lz4":
        raw = decompress_lz4_raw(buffer, nbytes) if raw_lz4 else decompress_lz4_hdf5(buffer, nbytes)
        return np.frombuffer(raw, dtype=dtype).reshape(shape)
    raise UnknownCodec(f"compression {algorithm!r}")


def decompress_bslz4(buffer: bytes | bytearray | memoryview, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Bitshuffle-LZ4 (HDF5 framing) -> array ``shape`` of ``dtype``; every size the buffer declares is checked
    before anything is inflated (``check_bslz4_blocks``)."""
    raw = np.frombuffer(buffer, dtype=np.uint8)
    if raw.size < HEADER.size:
        raise CodecError(f"bslz4: {raw.size} bytes is shorter than the 12-byte header")
    total, block_bytes = HEADER.unpack(raw[: HEADER.size].tobytes())
    expected = int(np.prod(shape)) * dtype.itemsize
    if total != expected or block_bytes <= 0 or block_bytes % (8 * dtype.itemsize):
        raise CodecError(f"bslz4: header says {total} bytes in blocks of {block_bytes}, frame needs {expected}")
    block = block_bytes // dtype.itemsize
    check_bslz4_blocks(raw[HEADER.size :].data, total // dtype.itemsize, dtype.itemsize, block)
    try:
        return bitshuffle.decompress_lz4(raw[HEADER.size :], shape, dtype, block)
    except (RuntimeError, ValueError) as exc:
        raise CodecError(f"bslz4: {exc}") from None


def check_bslz4_blocks(body: memoryview, elements: int, itemsize: int, block: int) -> None:
    """Walk the blocks of a bitshuffle-LZ4 body as bitshuffle will (full blocks of ``block`` elements, a last
    block of a multiple of 8, then the < 8 leftover elements raw): each declared compressed size must fit its
    block's LZ4 bound and the blocks must end exactly at the end of ``body``. bitshuffle itself trusts these sizes
    (it reads as many bytes as a block declares), so a corrupt size could make it read past the buffer."""
    last = elements % block - elements % block % 8
    blocks = elements // block + (1 if last else 0)
    if 4 * blocks > len(body):
        raise CodecError(f"bslz4: {len(body)} bytes cannot hold the {blocks} blocks of the frame")
    pos = 0
    for k in range(blocks):
        size = (block if k < elements // block else last) * itemsize
        if pos + BLOCK.size > len(body):
            raise CodecError(f"bslz4: block {k} of {blocks} starts past the end of the data")
        (compressed,) = BLOCK.unpack_from(body, pos)
        if compressed > size + size // 255 + 16:  # LZ4_compressBound
            raise CodecError(f"bslz4: block {k} declares {compressed} compressed bytes for {size} bytes")
        pos += BLOCK.size + compressed
    if pos + elements % 8 * itemsize != len(body):
        raise CodecError(f"bslz4: the blocks declare {pos} bytes of {len(body)} (plus the raw leftover)")


def compress_bslz4(frame: np.ndarray, block_elements: int = 0) -> bytes:
    """Bitshuffle-LZ4 with the HDF5 framing (``block_elements`` 0: the library's default block)."""
    block = block_elements or max(128, 8192 // frame.dtype.itemsize // 8 * 8)  # bitshuffle's default
    body = bitshuffle.compress_lz4(np.ascontiguousarray(frame), block)
    return HEADER.pack(frame.nbytes, block * frame.dtype.itemsize) + body.tobytes()


def decompress_lz4_hdf5(buffer: bytes | bytearray | memoryview, nbytes: int) -> bytes:
    """LZ4 with the HDF5 framing -> ``nbytes`` bytes; the header's sizes are checked before any block is inflated
    (at most as many blocks as the buffer can hold, each inflating to at most its block)."""
    view = memoryview(buffer).cast("B")
    if len(view) < HEADER.size:
        raise CodecError(f"lz4: {len(view)} bytes is shorter than the 12-byte header")
    total, block_bytes = HEADER.unpack(view[: HEADER.size])
    blocks = -(-total // block_bytes) if block_bytes > 0 else 0
    if total != nbytes or block_bytes <= 0 or HEADER.size + BLOCK.size * blocks > len(view):
        raise CodecError(f"lz4: header says {total} bytes in blocks of {block_bytes}, frame needs {nbytes}")
    out, pos = [], HEADER.size
    remaining = total
    try:
        while remaining > 0:
            (size,) = BLOCK.unpack(view[pos : pos + BLOCK.size])
            pos += BLOCK.size
            want = min(block_bytes, remaining)
            chunk = view[pos : pos + size]
            out.append(bytes(chunk) if size == want else lz4.block.decompress(chunk, uncompressed_size=want))
            pos += size
            remaining -= want
    except (struct.error, lz4.block.LZ4BlockError) as exc:
        raise CodecError(f"lz4: {exc}") from None
    data = b"".join(out)
    if len(data) != nbytes or pos != len(view):
        raise CodecError(f"lz4: decoded {len(data)} bytes from {pos} of {len(view)}, frame needs {nbytes}")
    return data


def compress_lz4_hdf5(frame: np.ndarray, block_bytes: int = 1 << 30) -> bytes:
    """LZ4 with the HDF5 framing (one block unless the frame exceeds ``block_bytes``)."""
    raw = np.ascontiguousarray(frame).tobytes()
    parts = [HEADER.pack(len(raw), block_bytes)]
    for start in range(0, len(raw), block_bytes):
        block = lz4.block.compress(raw[start : start + block_bytes], store_size=False)
        parts += [BLOCK.pack(len(block)), block]
    return b"".join(parts)


def decompress_lz4_raw(buffer: bytes | bytearray | memoryview, nbytes: int) -> bytes:
    """A bare LZ4 block (SIMPLON stream v1 ``lz4<``) -> ``nbytes`` bytes."""
    try:
        data = lz4.block.decompress(buffer, uncompressed_size=nbytes)
    except lz4.block.LZ4BlockError as exc:
        raise CodecError(f"lz4: {exc}") from None
    if len(data) != nbytes:
        raise CodecError(f"lz4: decoded {len(data)} bytes, frame needs {nbytes}")
    return data
