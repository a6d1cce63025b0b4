"""Chunk blobs of the node-local cache kept as files (cowfs.index)."""

from __future__ import annotations

import shutil
from pathlib import Path

from cowfs import layout
from cowfs.index import Index


def test_a_chunk_folder_removed_behind_the_cache_is_made_again(tmp_path: Path) -> None:
    """The cache remembers which chunk folders it made (no `mkdir` per chunk), and makes one
    again when it was removed meanwhile, rather than quietly caching nothing."""
    index = Index(tmp_path / "idx", cache_bytes=1 << 30)
    a, b = layout.chunk_key("ab" + "0" * 62), layout.chunk_key("ab" + "1" * 62)
    index.put_blob(a, b"first")
    assert index.get_blob(a) == b"first"
    folder = index.chunk_file(a)
    assert folder is not None
    shutil.rmtree(folder.parent)
    index.put_blob(b, b"second")
    assert index.get_blob(b) == b"second"
    assert index.get_blob(a) is None  # its file went with the folder: a miss, not an error
    index.close()
