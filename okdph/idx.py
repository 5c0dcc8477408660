"""The idx file format of MNIST and Fashion-MNIST, read with the standard library and numpy.

An idx file is a 4-byte magic number ``0x00 0x00 TYPE NDIM``, ``NDIM`` big-endian uint32
dimensions, then the values in row-major order (big-endian for multi-byte types). Images are
``0x00000803`` (uint8, three dimensions: count, rows, columns) and labels ``0x00000801`` (uint8,
one dimension). Files may be gzipped (recognised by their first two bytes, whatever their name).
torchvision's own reader is private and no longer reads ``.gz`` files, hence this one.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

#: Magic numbers of the two kinds of file Fashion-MNIST ships.
IMAGES_UINT8 = 0x00000803
LABELS_UINT8 = 0x00000801

# idx type byte -> numpy dtype (big-endian where it matters)
_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


class IdxError(ValueError):
    """An idx file that cannot be read as asked (one sentence naming the file)."""


def read_bytes(path: str | os.PathLike) -> bytes:
    """The content of ``path``, decompressed when it is gzipped."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise IdxError(f"cannot read idx file {path} ({err.strerror or err})") from None
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except EOFError:
        raise IdxError(f"idx file {path} is truncated (its gzip stream ends early)") from None
    except (gzip.BadGzipFile, zlib.error, OSError) as err:
        raise IdxError(f"idx file {path} is not a readable gzip file ({err})") from None


def read_idx(path: str | os.PathLike, magic: int | None = None) -> np.ndarray:
    """The array stored in the idx file ``path`` (gzipped or plain).

    ``magic``, when given, is the magic number the file must have (:data:`IMAGES_UINT8`,
    :data:`LABELS_UINT8`). Raises :class:`IdxError` (one sentence) for another magic number, an
    unknown type byte, and a file shorter or longer than its header says.
    """
    path = Path(path)
    data = read_bytes(path)
    if len(data) < 4:
        raise IdxError(f"idx file {path} is truncated: {len(data)} bytes, not even a magic number")
    found = int.from_bytes(data[:4], "big")
    if magic is not None and found != magic:
        raise IdxError(
            f"idx file {path} has magic number 0x{found:08x}, not 0x{magic:08x} "
            f"({_describe(magic)})"
        )
    if data[0] or data[1] or data[2] not in _TYPES:
        raise IdxError(
            f"idx file {path} has magic number 0x{found:08x}, which is not an idx header"
        )
    dtype, ndim = _TYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IdxError(
            f"idx file {path} is truncated: {len(data)} bytes, shorter than its "
            f"{ndim}-dimension header"
        )
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        what = "is truncated" if len(data) < expected else "has trailing bytes"
        raise IdxError(
            f"idx file {path} {what}: {len(data)} bytes where its header {list(shape)} implies "
            f"{expected}"
        )
    values = np.frombuffer(data, dtype, offset=header).reshape(shape)
    return values.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | os.PathLike, array: np.ndarray, compress: bool | None = None) -> Path:
    """Write ``array`` (uint8) as an idx file, gzipped when ``compress`` (default: the name ends
    in ``.gz``); the inverse of :func:`read_idx`, for tests and small fixtures."""
    path = Path(path)
    array = np.ascontiguousarray(array, dtype=np.uint8)
    body = (0x0800 | array.ndim).to_bytes(4, "big")
    body += np.asarray(array.shape, dtype=">u4").tobytes() + array.tobytes()
    if compress if compress is not None else path.suffix == ".gz":
        body = gzip.compress(body, mtime=0)
    path.write_bytes(body)
    return path


def _describe(magic: int) -> str:
    if magic == IMAGES_UINT8:
        return "idx images of uint8"
    if magic == LABELS_UINT8:
        return "idx labels of uint8"
    return "the expected idx type"


__all__ = ["IMAGES_UINT8", "LABELS_UINT8", "IdxError", "read_bytes", "read_idx", "write_idx"]
