"""What the pack-file chunk cache keeps, in its LMDB databases and its files (the format
`cowfs.packcache` reads and `cowfs.packwriter` appends; docs/architecture.md, *The index*).

- `packed`: a chunk's key → (pack, offset, length) and the xxh3-64 of each `BLOCK` of it;
- `packs`: a pack's id (4 bytes, big-endian) → (bytes written or reserved in it, last use);
- `pack_members` (duplicates): a pack's id → the key of each chunk recorded in it;
- `meta`: the bytes in all packs, the next pack id, and a count of pack drops;
- files `packs/<id, 8 digits>.pack`, append-only, never rewritten.
"""

from __future__ import annotations

import struct
from array import array
from pathlib import Path
from typing import NamedTuple

import xxhash

#: 16 KiB: a 4 KiB read costs a 16 KiB disk read; 64 KiB blocks made the disk the limit of random
#: 4 KiB reads on this machine (its 128 KiB random reads run at a tenth of its 4 KiB IOPS).
BLOCK = 16 << 10

LOC = struct.Struct("<IQI")  # pack, offset, length; then the block sums
PACK = struct.Struct("<QQ")  # bytes written (or reserved) in it, last use
U64 = struct.Struct("<Q")
PACK_BYTES_KEY = b"pack_bytes"
NEXT_PACK_KEY = b"next_pack"
DROPS_KEY = b"pack_drops"


class PackLoc(NamedTuple):
    pack: int
    offset: int
    length: int
    #: xxh3-64 of each `BLOCK` of the chunk's verified bytes.
    sums: array


def block_sums(plain: bytes | memoryview) -> array:
    mv = memoryview(plain)
    return array(
        "Q", (xxhash.xxh3_64_intdigest(mv[i : i + BLOCK]) for i in range(0, len(mv), BLOCK))
    )


def blocks_match(buf: bytes, start: int, sums: array) -> bool:
    """Whether `buf`, the chunk's bytes from `start` (a multiple of `BLOCK`), has the sums."""
    mv = memoryview(buf)
    return all(
        xxhash.xxh3_64_intdigest(mv[i : i + BLOCK]) == sums[(start + i) // BLOCK]
        for i in range(0, len(mv), BLOCK)
    )


def encode_loc(pack: int, offset: int, sums: array, length: int) -> bytes:
    return LOC.pack(pack, offset, length) + sums.tobytes()


def decode_loc(raw: bytes) -> PackLoc:
    sums = array("Q")
    sums.frombytes(raw[LOC.size :])
    return PackLoc(*LOC.unpack_from(raw), sums)


def loc_pack(raw: bytes) -> int:
    """The pack of an encoded location, without decoding its sums."""
    return int(LOC.unpack_from(raw)[0])


def pack_id_key(pack: int) -> bytes:
    """Big-endian, so LMDB's key order is the packs' creation order."""
    return pack.to_bytes(4, "big")


def pack_path(root: Path, pack: int) -> Path:
    return root / f"{pack:08d}.pack"
