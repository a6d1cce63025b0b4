"""The crash-and-race harness: real `cowfs` processes racing and killed with SIGKILL.

Each round, seeded, runs at once: mirroring puts of fresh directories to a few branches (some
killed at a random moment), `repo delete` and `repo create` of a repo that puts are writing to,
branch creates, and (with a mount) writes through the mount sealed by `cowfs commit`, with the
commit or the whole mount killed at a random moment. After every round it verifies the store:

- every put that exited 0 printed a commit that reads back, byte for byte, as its directory;
- every commit of every branch (those of killed writers too) is one of the contents some writer
  put or the mount held, read back byte for byte (nothing half-applied);
- a put racing a delete exited 0 or with one line (no traceback), and commits of the deleted
  repo never surface in the one created after it;
- `cowfs stats` and `cowfs repo list` exit 0 and report no damage.

The test suite runs a short, bounded version (tests/test_store_crash.py); scripts/soak.py runs
it for as long as asked. A failure prints the seed and round to replay it.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import blake3

from cowfs.lake import Lake
from cowfs.reader import ChunkReader
from cowfs.tree import TreeView

#: A tree's contents as what verification compares: path -> BLAKE3 of the bytes (None: a dir).
Contents = frozenset[tuple[str, str | None]]

STABLE = "r"  # never deleted
DOOMED = "t"  # deleted and created again while puts write to it
BRANCHES = ("main", "b1")
MOUNT_BRANCH = "w"


@dataclass
class Finished:
    repo: str
    commit: str
    contents: Contents


@dataclass
class Tally:
    rounds: int = 0
    puts: int = 0
    puts_killed: int = 0
    puts_lost_to_delete: int = 0
    deletes: int = 0
    branch_creates: int = 0
    commits: int = 0
    commits_killed: int = 0
    mounts_killed: int = 0
    verified_commits: int = 0

    def line(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in vars(self).items())


def contents_of_dir(root: Path) -> Contents:
    out: set[tuple[str, str | None]] = set()
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for d in dirnames:
            out.add((d if rel == "." else f"{rel}/{d}", None))
        for f in filenames:
            p = os.path.join(dirpath, f)
            key = f if rel == "." else f"{rel}/{f}"
            out.add((key, blake3.blake3(Path(p).read_bytes()).hexdigest()))
    return frozenset(out)


class Harness:
    def __init__(
        self,
        root: Path,
        url: str,
        env: dict[str, str],
        seed: int,
        mount: bool = False,
        say=print,  # noqa: ANN001
    ) -> None:
        self.root = root
        self.url = url
        self.env = dict(env, COWFS_STORE=url, PYTHONUNBUFFERED="1")
        self.rng = random.Random(seed)
        self.seed = seed
        self.say = say
        self.tally = Tally()
        self.finished: list[Finished] = []
        #: Every content a commit of each repo may hold: what any writer put (or the mount had).
        self.known: dict[str, set[Contents]] = {STABLE: {frozenset()}, DOOMED: {frozenset()}}
        self.n = 0
        self.mounted = None
        self.model: dict[str, str] = {}  # the mount branch's files: path -> digest
        if mount:
            from tests.mountutil import MountedLake

            self.mounted = MountedLake(root / "m", url)
            self.env.update(
                COWFS_CACHE_DIR=self.mounted.env["COWFS_CACHE_DIR"],
                COWFS_STATE_DIR=self.mounted.env["COWFS_STATE_DIR"],
            )
        self.cli("init")
        for repo in (STABLE, DOOMED):
            self.cli("repo", "create", repo)

    # --- processes -----------------------------------------------------------------------

    def _argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "cowfs.cli.main", *args]

    def cli(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        p = subprocess.run(
            self._argv(*args), env=self.env, capture_output=True, text=True, timeout=300
        )
        if ok and p.returncode != 0:
            raise AssertionError(self._where(f"cowfs {' '.join(args)}: {p.stderr}"))
        return p

    def spawn(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self._argv(*args),
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def _where(self, msg: str) -> str:
        return f"[seed {self.seed}, round {self.tally.rounds}] {msg}"

    def _clean_failure(self, args: str, p: subprocess.Popen[str], err: str) -> None:
        lines = err.strip().splitlines()
        if "Traceback" in err or p.returncode not in (1, 2) or len(lines) != 1:
            raise AssertionError(self._where(f"{args} exited {p.returncode}: {err}"))

    # --- one round -----------------------------------------------------------------------

    def make_source(self) -> Path:
        self.n += 1
        src = self.root / "src" / f"s{self.n}"
        (src / "sub").mkdir(parents=True)
        rng = self.rng
        for i in range(rng.randint(1, 12)):
            (src / ("sub" if i % 3 == 0 else "") / f"f{i}.txt").write_bytes(
                rng.randbytes(rng.randint(0, 40_000))
            )
        if rng.random() < 0.7:
            (src / "big.bin").write_bytes(rng.randbytes(rng.randint(1_100_000, 3_000_000)))
        return src

    def round(self) -> None:
        rng = self.rng
        delete_t = rng.random() < 0.4
        jobs: list[tuple[str, str, Path, subprocess.Popen[str], threading.Timer | None]] = []
        for _ in range(rng.randint(2, 4)):
            repo = DOOMED if delete_t and rng.random() < 0.5 else STABLE
            branch = rng.choice(BRANCHES)
            src = self.make_source()
            self.known[repo].add(contents_of_dir(src))
            p = self.spawn("put", f"{repo}@{branch}", str(src))
            kill = self._kill_later(p, rng.uniform(0.3, 2.5)) if rng.random() < 0.5 else None
            jobs.append((repo, branch, src, p, kill))
        others: list[tuple[str, subprocess.Popen[str]]] = []
        if rng.random() < 0.5:
            name = f"c{self.n}"
            others.append(
                (
                    f"branch create {name}",
                    self.spawn("branch", "create", f"{STABLE}@{name}", "--from", f"{STABLE}@main"),
                )
            )
            self.tally.branch_creates += 1
        if delete_t:
            time.sleep(rng.uniform(0.0, 1.0))
            self.cli("repo", "delete", DOOMED, "--yes")
            self.cli("repo", "create", DOOMED)
            self.tally.deletes += 1
            self.known[DOOMED] = {frozenset()} | {
                contents_of_dir(src) for repo, _, src, _, _ in jobs if repo == DOOMED
            }
        if self.mounted is not None:
            self._mount_step()
        for repo, branch, src, p, kill in jobs:
            out, err = p.communicate(timeout=300)
            if kill is not None:
                kill.cancel()
            self.tally.puts += 1
            if p.returncode == -signal.SIGKILL:
                self.tally.puts_killed += 1
                continue
            if p.returncode == 0:
                cid = out.strip().splitlines()[-1]
                self.finished.append(Finished(repo, cid, contents_of_dir(src)))
            elif repo == DOOMED and delete_t and ("deleted" in err or "no repo named" in err):
                self._clean_failure(f"put {repo}@{branch}", p, err)
                self.tally.puts_lost_to_delete += 1
            else:
                raise AssertionError(self._where(f"put {repo}@{branch} failed: {err}"))
        for what, p in others:
            _, err = p.communicate(timeout=300)
            if p.returncode != 0:
                self._clean_failure(what, p, err)
        self.tally.rounds += 1

    @staticmethod
    def _kill_later(p: subprocess.Popen[str], seconds: float) -> threading.Timer:
        def kill() -> None:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)

        t = threading.Timer(seconds, kill)
        t.daemon = True
        t.start()
        return t

    # --- the mount -----------------------------------------------------------------------

    def _mount_step(self) -> None:
        m = self.mounted
        assert m is not None
        if m.proc is None:
            m.mount()
            self.cli("write", f"{STABLE}@{MOUNT_BRANCH}")
        where = m.mnt / STABLE / MOUNT_BRANCH
        for _ in range(self.rng.randint(1, 3)):
            self.n += 1
            data = self.rng.randbytes(self.rng.randint(0, 600_000))
            name = f"m{self.n}.bin"
            fd = os.open(where / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            self.model[name] = blake3.blake3(data).hexdigest()
        held = frozenset((p, d) for p, d in self.model.items())
        self.known[STABLE].add(held)
        p = self.spawn("commit", f"{STABLE}@{MOUNT_BRANCH}", "--keep-open")
        self.tally.commits += 1
        what = self.rng.choices(["finish", "kill-commit", "kill-mount"], [3, 3, 4])[0]
        delay = self.rng.uniform(0.2, 2.0)
        if what == "kill-commit":
            self._kill_later(p, delay)
        elif what == "kill-mount":
            try:
                p.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                pass
            m.kill9()
            self.tally.mounts_killed += 1
        out, err = p.communicate(timeout=300)
        if p.returncode == -signal.SIGKILL:
            self.tally.commits_killed += 1
        if p.returncode == 0 and out.strip():
            self.finished.append(Finished(STABLE, out.strip().splitlines()[-1], held))
        elif p.returncode not in (0, -signal.SIGKILL) and what != "kill-mount":
            raise AssertionError(self._where(f"cowfs commit failed: {err}"))
        if m.proc is None:
            m.mount()  # staged writes survive the kill; the next commit seals them
            self.cli("write", f"{STABLE}@{MOUNT_BRANCH}")

    # --- verification --------------------------------------------------------------------

    def _read(self, lake: Lake, reader: ChunkReader, tree: str) -> Contents:
        out: set[tuple[str, str | None]] = set()
        for e in TreeView(lake.store, tree).walk(""):
            if e.is_dir:
                out.add((e.path, None))
            else:
                h = blake3.blake3()
                for piece in reader.iter_file(e):
                    h.update(piece)
                out.add((e.path, h.hexdigest()))
        return frozenset(out)

    def verify(self) -> None:
        env_cache = self.root / f"verify-cache-{self.tally.rounds}"
        saved = os.environ.get("COWFS_CACHE_DIR")
        os.environ["COWFS_CACHE_DIR"] = str(env_cache)  # a fresh node: nothing from a cache
        try:
            lake = Lake.open(self.url)
        finally:
            if saved is None:
                os.environ.pop("COWFS_CACHE_DIR", None)
            else:
                os.environ["COWFS_CACHE_DIR"] = saved
        reader = ChunkReader(lake.store)
        seen: dict[tuple[str, str], Contents] = {}
        try:

            def contents(repo: str, cid: str) -> Contents:
                if (repo, cid) not in seen:
                    seen[(repo, cid)] = self._read(lake, reader, lake.get_commit(repo, cid).tree)
                return seen[(repo, cid)]

            for f in self.finished:
                if f.repo == DOOMED and lake.live_commit(f.repo, f.commit) is None:
                    continue  # deleted with its repo after it landed
                got = contents(f.repo, f.commit)
                if got != f.contents:
                    raise AssertionError(self._where(f"commit {f.repo}@{f.commit} differs"))
            for repo in (STABLE, DOOMED):
                for branch, head in lake.branches(repo):
                    for c in lake.log(repo, lake.get_commit(repo, head)):
                        if contents(repo, c.id) not in self.known[repo]:
                            raise AssertionError(
                                self._where(f"{repo}@{branch} commit {c.id} is no writer's tree")
                            )
            stats = lake.stats()
            if stats["damaged"]:
                raise AssertionError(self._where(f"damage: {stats['damaged']}"))
        finally:
            reader.close()
            lake.close()
        self.tally.verified_commits += len(seen)
        self.cli("stats")
        self.cli("repo", "list")
        # Finished commits of the deleted repo are gone now; keep the stable repo's.
        self.finished = [
            f
            for f in self.finished
            if f.repo == STABLE or f.commit in {c for (r, c) in seen if r == DOOMED}
        ]

    def run(self, seconds: float, min_rounds: int = 2) -> Tally:
        deadline = time.monotonic() + seconds
        try:
            while self.tally.rounds < min_rounds or time.monotonic() < deadline:
                self.round()
                self.verify()
                self.say(self._where(self.tally.line()))
        finally:
            if self.mounted is not None:
                self.mounted.close()
        return self.tally
