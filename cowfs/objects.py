"""The framing shared by every content-addressed object: chunks and tree nodes.

An object is a 16-byte header followed by its payload:

    magic  b"CWFS"   4 bytes
    version  u8      1
    kind     u8      1 = chunk of file data, 2 = tree node
    codec    u8      0 = raw, 1 = zstd
    reserved u8      0
    length   u64 LE  length of the plain (uncompressed) bytes

Its address is the BLAKE3-256 of the plain bytes, hex-encoded, so the same bytes always land at
the same key whatever codec was chosen, and a reader verifies every object it decodes.
"""

from __future__ import annotations

import struct
import threading
from enum import IntEnum

import blake3
import zstandard

from cowfs import layout
from cowfs.errors import CorruptObject

MAGIC = b"CWFS"
VERSION = 1
_HEADER = struct.Struct("<4sBBBxQ")
HEADER_SIZE = _HEADER.size

_SAMPLE = 64 * 1024
#: Compress only when a sample shrinks below this fraction: zstd on incompressible bytes costs
#: more time than the bytes it saves.
_WORTH_IT = 0.9


class Kind(IntEnum):
    CHUNK = 1
    TREE = 2


class Codec(IntEnum):
    RAW = 0
    ZSTD = 1


_local = threading.local()


def _compressor() -> zstandard.ZstdCompressor:
    c = getattr(_local, "cctx", None)
    if c is None:
        c = _local.cctx = zstandard.ZstdCompressor(level=3)
    return c


def _decompressor() -> zstandard.ZstdDecompressor:
    d = getattr(_local, "dctx", None)
    if d is None:
        d = _local.dctx = zstandard.ZstdDecompressor()
    return d


def object_id(plain: bytes | memoryview) -> str:
    return blake3.blake3(plain).hexdigest()


def object_key(kind: Kind, oid: str) -> str:
    return layout.chunk_key(oid) if kind is Kind.CHUNK else layout.tree_key(oid)


def _pays_to_compress(plain: bytes | memoryview) -> bool:
    if len(plain) < 512:
        return False
    mid = len(plain) // 2
    sample = bytes(plain[mid : mid + _SAMPLE]) if len(plain) > 2 * _SAMPLE else bytes(plain)
    return len(_compressor().compress(sample)) < _WORTH_IT * len(sample)


def encode(kind: Kind, plain: bytes | memoryview) -> bytes:
    """Frame plain bytes for storage, compressing only where it pays."""
    return b"".join(encode_parts(kind, plain))


def encode_parts(kind: Kind, plain: bytes | memoryview) -> tuple[bytes, bytes | memoryview]:
    """`encode` as its header and its payload, for a store that writes them without joining
    them (a raw chunk's payload is then `plain` itself, not a copy)."""
    if _pays_to_compress(plain):
        packed = _compressor().compress(plain)
        if len(packed) < _WORTH_IT * len(plain):
            return _HEADER.pack(MAGIC, VERSION, kind, Codec.ZSTD, len(plain)), packed
    return _HEADER.pack(MAGIC, VERSION, kind, Codec.RAW, len(plain)), plain


def decode(oid: str, framed: bytes, kind: Kind | None = None) -> bytes:
    """Unframe and verify an object; any mismatch is `CorruptObject` naming the object."""
    return decode_parts(oid, framed[:HEADER_SIZE], memoryview(framed)[HEADER_SIZE:], kind)


def decode_parts(
    oid: str, head: bytes, payload: bytes | memoryview, kind: Kind | None = None
) -> bytes:
    """`decode` of an object read as its header and its payload: a raw payload that is already
    `bytes` is returned as it is, once verified, not copied."""
    if len(head) < HEADER_SIZE:
        raise CorruptObject(f"object {oid} is corrupt: truncated header")
    magic, version, k, codec, length = _HEADER.unpack_from(head)
    if magic != MAGIC or version != VERSION:
        raise CorruptObject(f"object {oid} is corrupt: bad magic or unknown version {version}")
    if kind is not None and k != kind:
        raise CorruptObject(f"object {oid} is corrupt: kind {k}, expected {int(kind)}")
    if codec == Codec.RAW:
        plain = payload if isinstance(payload, bytes) else bytes(payload)
    elif codec == Codec.ZSTD:
        try:
            plain = _decompressor().decompress(payload, max_output_size=length)
        except zstandard.ZstdError as e:
            raise CorruptObject(f"object {oid} is corrupt: {e}") from None
    else:
        raise CorruptObject(f"object {oid} is corrupt: unknown codec {codec}")
    if len(plain) != length or object_id(plain) != oid:
        raise CorruptObject(
            f"object {oid} is corrupt: its bytes do not match its hash "
            "(the stored copy is damaged: restore it from a backup or re-put the data)"
        )
    return plain
