"""Multipart uploads in progress, as node-local state: each part's chunk references.

A part is chunked and stored as it arrives; what stays here is its size, its digest and its chunk
references (a few hundred bytes per part), one small JSON file each, written atomically. The
completed file is the concatenation of its parts' chunk slices, so completing copies no data.
An upload lives on the node that started it (its parts' state is not in the store).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from cowfs.entries import ChunkRef
from cowfs.s3gateway.errors import S3Error

MAX_PART_NUMBER = 10_000


@dataclass(frozen=True)
class Upload:
    id: str
    bucket: str
    key: str
    access_key: str
    created: float


@dataclass(frozen=True)
class Part:
    number: int
    size: int
    etag: str
    refs: tuple[ChunkRef, ...]
    modified: float


class Uploads:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _dir(self, upload_id: str) -> Path:
        if len(upload_id) != 32 or not all(c in "0123456789abcdef" for c in upload_id):
            raise S3Error("NoSuchUpload", f"no multipart upload {upload_id!r}")
        return self.root / upload_id

    def create(self, bucket: str, key: str, access_key: str) -> Upload:
        up = Upload(uuid.uuid4().hex, bucket, key, access_key, time.time())
        d = self.root / up.id
        (d / "parts").mkdir(parents=True)
        _write_json(d / "upload.json", asdict(up))
        return up

    def get(self, upload_id: str, bucket: str, key: str) -> Upload:
        try:
            raw = json.loads((self._dir(upload_id) / "upload.json").read_text())
        except FileNotFoundError:
            raise S3Error(
                "NoSuchUpload", f"no multipart upload {upload_id} (completed, aborted or unknown)"
            ) from None
        up = Upload(**raw)
        if (up.bucket, up.key) != (bucket, key):
            raise S3Error("NoSuchUpload", f"upload {upload_id} is not for {bucket}/{key}")
        return up

    def put_part(self, up: Upload, part: Part) -> None:
        if not 1 <= part.number <= MAX_PART_NUMBER:
            raise S3Error("InvalidArgument", "part numbers run from 1 to 10000")
        record = {
            "number": part.number,
            "size": part.size,
            "etag": part.etag,
            "refs": [[r.id, r.offset, r.length] for r in part.refs],
            "modified": part.modified,
        }
        _write_json(self.root / up.id / "parts" / f"{part.number:05d}.json", record)

    def parts(self, up: Upload) -> list[Part]:
        out = []
        folder = self.root / up.id / "parts"
        for p in sorted(folder.glob("*.json")):
            r = json.loads(p.read_text())
            refs = tuple(ChunkRef(i, o, n) for i, o, n in r["refs"])
            out.append(Part(r["number"], r["size"], r["etag"], refs, r["modified"]))
        return out

    def list(self, bucket: str) -> list[Upload]:
        out = []
        for meta in sorted(self.root.glob("*/upload.json")):
            try:
                up = Upload(**json.loads(meta.read_text()))
            except (OSError, ValueError, TypeError):
                continue
            if up.bucket == bucket:
                out.append(up)
        return sorted(out, key=lambda u: (u.key, u.created))

    def remove(self, up: Upload) -> None:
        shutil.rmtree(self.root / up.id, ignore_errors=True)


def _write_json(path: Path, record: dict) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    with open(tmp, "w") as f:
        json.dump(record, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
