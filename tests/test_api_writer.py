"""`BranchWriter` against a model: any sequence of puts (small, large, streamed, copied) and
deletes over a committed base lands as exactly the tree a dict of files predicts, in one commit."""

from __future__ import annotations

import io
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cowfs
from cowfs.lake import Lake

FILES = ["f", "x/a", "x/b", "x/y/c", "z/d"]
DIRS = ["x", "x/y", "z"]
SIZES = [0, 7, 5000, (1 << 20) + 3]


def _data(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


op = st.one_of(
    st.tuples(st.just("bytes"), st.sampled_from(FILES), st.integers(0, 99), st.sampled_from(SIZES)),
    st.tuples(st.just("sink"), st.sampled_from(FILES), st.integers(0, 99), st.sampled_from(SIZES)),
    st.tuples(
        st.just("stream"), st.sampled_from(FILES), st.integers(0, 99), st.sampled_from(SIZES)
    ),
    st.tuples(st.just("copy"), st.sampled_from(FILES), st.sampled_from(FILES), st.just(0)),
    st.tuples(st.just("delete"), st.sampled_from(FILES + DIRS), st.just(0), st.just(0)),
)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cowfs.Client]:
    root: Path = tmp_path_factory.mktemp("writer-model")
    mp = pytest.MonkeyPatch()
    mp.setenv("COWFS_CACHE_DIR", str(root / "cache"))
    with Lake.open(str(root / "store"), create=True) as lake:
        lake.create_repo("m")
    with cowfs.connect(str(root / "store"), head_ttl=0) as c:
        yield c
    mp.undo()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    base=st.dictionaries(st.sampled_from(FILES), st.integers(0, 99)), ops=st.lists(op, max_size=8)
)
def test_writer_matches_a_dict_of_files(
    client: cowfs.Client, base: dict[str, int], ops: list[tuple]
) -> None:
    with client.writer("m@main") as w:  # the base: what the branch holds before
        w.delete("")
        for path, seed in base.items():
            w.put_bytes(path, _data(seed, 100))
    model = {p: _data(s, 100) for p, s in base.items()}
    before = client.commit_of("m@main").id
    with client.writer("m@main") as w:
        for kind, path, a, size in ops:  # a: a seed, or a copy's destination
            if kind == "delete":
                w.delete(path)
                model = {
                    p: d for p, d in model.items() if p != path and not p.startswith(path + "/")
                }
            elif kind == "copy":
                if a == path or path not in model:
                    continue
                # A copy re-uses an entry, as cp_file does: from the committed base only.
                if path not in base or model[path] != _data(base[path], 100):
                    continue
                w.put_entry(a, client.entry(f"m@{before}:/{path}")[1])
                model[a] = model[path]
            else:
                data = _data(a, size)
                if kind == "bytes":
                    w.put_bytes(path, data)
                elif kind == "stream":
                    w.put_stream(path, io.BytesIO(data))
                else:
                    sink = w.open(path)
                    for i in range(0, len(data), 70_000):
                        sink.write(data[i : i + 70_000])
                    sink.close()
                model[path] = data
    got = {
        i.path[1:]: client.read_bytes(f"m@main:{i.path}")
        for i in client.walk("m@main")
        if i.type == "file"
    }
    assert got == model
    assert before in [c.id for c in client.log("m@main")][:2]  # one commit, or none


def test_a_path_cannot_be_file_and_directory_in_one_change(client: cowfs.Client) -> None:
    with client.writer("m@main") as w:
        w.put_bytes("q", b"file")
        with pytest.raises(cowfs.UsageError, match="is a file in this change"):
            w.put_bytes("q/inner", b"x")
        w.put_bytes("r/inner", b"x")
        with pytest.raises(cowfs.UsageError, match="writes beneath it"):
            w.put_bytes("r", b"file")
        w.delete("r")
        w.put_bytes("r", b"now a file")
    assert client.read_bytes("m@main:/r") == b"now a file"
    assert client.read_bytes("m@main:/q") == b"file"
