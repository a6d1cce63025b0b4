"""Random writes, renames, deletes, mkdirs and commits, applied both to a mounted branch and to a
plain dict, which must agree after every step and after every commit. Operations that must fail
(names over 255 bytes, renames into themselves or over the wrong kind) are in the mix: each must
answer its errno and change nothing."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from cowfs.reader import ChunkReader
from tests.mountutil import MountedLake, wait_for

pytestmark = pytest.mark.mount

NAMES = st.sampled_from(["a", "b", "ü ñ", "c.d"])
DATA = st.binary(max_size=3000)
DIR = "d"


def read_mount(root: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        rel = "" if rel == "." else rel
        for d in dirnames:
            out[f"{rel}/{d}" if rel else d] = DIR
        for f in filenames:
            out[f"{rel}/{f}" if rel else f] = Path(dirpath, f).read_bytes()
    return out


def read_commit(m: MountedLake, repo: str) -> dict[str, object]:
    lake = m.lake()
    head = lake.head(repo, "main")
    out: dict[str, object] = {}
    if head is None:
        return out
    reader = ChunkReader(lake.store)
    try:
        for e in lake.walk(head):
            out[e.path] = DIR if e.is_dir else b"".join(reader.iter_file(e))
    finally:
        reader.close()
    return out


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_mount_matches_model(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = str(tmp_path / "store") if backend == "local" else request.getfixturevalue("s3_url")
    m = MountedLake(tmp_path, url)
    m.cli("init")
    m.mount()
    counter = iter(range(1000))
    examples = 10 if backend == "local" else 3

    class Machine(RuleBasedStateMachine):
        @initialize()
        def start(self) -> None:
            self.repo = f"r{next(counter)}"
            m.cli("repo", "create", self.repo)
            m.cli("write", f"{self.repo}@main")
            self.root = m.mnt / self.repo / "main"
            assert wait_for(lambda: os.getxattr(self.root, "user.cowfs.writable") == b"1")
            self.model: dict[str, object] = {}

        def _dirs(self) -> list[str]:
            return [""] + sorted(p for p, v in self.model.items() if v == DIR)

        def _files(self) -> list[str]:
            return sorted(p for p, v in self.model.items() if v != DIR)

        def _join(self, parent: str, name: str) -> str:
            return f"{parent}/{name}" if parent else name

        @rule(i=st.integers(0, 50), name=NAMES, data=DATA)
        def write_new_or_replace(self, i: int, name: str, data: bytes) -> None:
            dirs = self._dirs()
            path = self._join(dirs[i % len(dirs)], name)
            if self.model.get(path) == DIR:
                return
            (self.root / path).write_bytes(data)
            self.model[path] = data

        @rule(i=st.integers(0, 50), off=st.integers(0, 4000), data=DATA)
        def patch(self, i: int, off: int, data: bytes) -> None:
            files = self._files()
            if not files:
                return
            path = files[i % len(files)]
            with open(self.root / path, "r+b") as f:
                f.seek(off)
                f.write(data)
            old = bytearray(self.model[path])  # type: ignore[arg-type]
            if not data:
                return  # writing nothing past the end does not extend a file
            if len(old) < off:
                old.extend(bytes(off - len(old)))
            old[off : off + len(data)] = data
            self.model[path] = bytes(old)

        @rule(i=st.integers(0, 50), size=st.integers(0, 4000))
        def truncate(self, i: int, size: int) -> None:
            files = self._files()
            if not files:
                return
            path = files[i % len(files)]
            os.truncate(self.root / path, size)
            old = self.model[path]
            assert isinstance(old, bytes)
            self.model[path] = old[:size] + bytes(max(0, size - len(old)))

        @rule(i=st.integers(0, 50), name=NAMES)
        def mkdir(self, i: int, name: str) -> None:
            dirs = self._dirs()
            path = self._join(dirs[i % len(dirs)], name)
            if path in self.model or path.count("/") > 2:
                return
            os.mkdir(self.root / path)
            self.model[path] = DIR

        @rule(i=st.integers(0, 50))
        def delete(self, i: int) -> None:
            paths = sorted(self.model)
            if not paths:
                return
            path = paths[i % len(paths)]
            if self.model[path] == DIR:
                shutil.rmtree(self.root / path)
                for p in [p for p in self.model if p == path or p.startswith(path + "/")]:
                    del self.model[p]
            else:
                os.unlink(self.root / path)
                del self.model[path]

        @rule(i=st.integers(0, 50), j=st.integers(0, 50), name=NAMES)
        def rename(self, i: int, j: int, name: str) -> None:
            paths = sorted(self.model)
            if not paths:
                return
            src = paths[i % len(paths)]
            dirs = [d for d in self._dirs() if d != src and not d.startswith(src + "/")]
            dst = self._join(dirs[j % len(dirs)], name)
            if dst == src:
                return
            target = self.model.get(dst)
            if target is not None and (self.model[src] == DIR or target == DIR):
                return  # keep to renames every filesystem agrees on
            os.rename(self.root / src, self.root / dst)
            moved = {
                dst + p[len(src) :]: v
                for p, v in self.model.items()
                if p == src or p.startswith(src + "/")
            }
            for p in [p for p in self.model if p == src or p.startswith(src + "/")]:
                del self.model[p]
            self.model.update(moved)

        @rule(i=st.integers(0, 50), j=st.integers(0, 50), how=st.integers(0, 6))
        def failing_op(self, i: int, j: int, how: int) -> None:
            """An operation that must fail whole: its errno, and nothing changed."""
            paths = sorted(self.model)
            dirs = self._dirs()
            files = self._files()
            long = "L" * 256
            parent = dirs[i % len(dirs)]
            src = paths[i % len(paths)] if paths else None
            cases: list[tuple[int, object, tuple]] = [
                (errno.ENAMETOOLONG, open, (self.root / self._join(parent, long), "wb")),
                (errno.ENAMETOOLONG, os.mkdir, (self.root / self._join(parent, long),)),
                (errno.ENOENT, os.rename, (self.root / "missing", self.root / "x")),
            ]
            if src is not None:
                to = self.root / self._join(dirs[j % len(dirs)], long)
                cases.append((errno.ENAMETOOLONG, os.rename, (self.root / src, to)))
            subdirs = [d for d in dirs if d]
            if subdirs:
                d = subdirs[i % len(subdirs)]
                cases.append((errno.EINVAL, os.rename, (self.root / d, self.root / d / "in")))
                outside = [f for f in files if not f.startswith(d + "/")]
                if outside:  # the kernel answers a rename over an ancestor ENOTEMPTY itself
                    f = outside[j % len(outside)]
                    cases.append((errno.ENOTDIR, os.rename, (self.root / d, self.root / f)))
                    cases.append((errno.EISDIR, os.rename, (self.root / f, self.root / d)))
                full = [x for x in subdirs if any(p.startswith(x + "/") for p in self.model)]
                others = [x for x in subdirs if not x.startswith(d)]
                if full and others:
                    dst = full[j % len(full)]
                    if not dst.startswith(d) and not d.startswith(dst):
                        cases.append((errno.ENOTEMPTY, os.rename, (self.root / d, self.root / dst)))
            code, fn, args = cases[how % len(cases)]
            before = read_mount(self.root)
            with pytest.raises(OSError) as e:
                fn(*args)  # type: ignore[operator]
            assert e.value.errno == code, (fn, args)
            assert read_mount(self.root) == before == self.model

        @rule()
        def commit(self) -> None:
            m.cli("commit", f"{self.repo}@main", "-m", "step", "--keep-open")
            assert read_commit(m, self.repo) == self.model
            assert wait_for(lambda: read_mount(self.root) == self.model, timeout=5)

        @invariant()
        def mount_matches(self) -> None:
            if hasattr(self, "model"):
                assert read_mount(self.root) == self.model

    Machine.TestCase.settings = settings(
        max_examples=examples,
        stateful_step_count=20,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    try:
        Machine.TestCase().runTest()
    finally:
        with contextlib.suppress(Exception):
            m.close()
