"""One worker: a directory laid out as `/pfs`, and the process that runs datums in it.

A worker handles one datum at a time: the executor fills `pfs/<input>`, the worker runs the
code (a fresh process per datum, or with batching one long-lived process fed through the protocol
in `cowfs.pipelines.batch`), and the datum's output is moved out of `pfs/out` so the next datum
starts empty. Processes get their own session so a timeout kills everything they started.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cowfs.pipelines.sandbox import Sandbox, build
from cowfs.pipelines.spec import PipelineSpec

#: The most of a datum's output (stdout and stderr) kept as its log.
LOG_LIMIT = 1 << 20


@dataclass
class Attempt:
    ok: bool
    error: str
    log: bytes
    seconds: float


class Cancelled(Exception):
    pass


class StopFlag(Protocol):
    """Anything that says whether to stop, such as a `threading.Event`."""

    def is_set(self) -> bool: ...


class Worker:
    def __init__(
        self,
        root: Path,
        spec: PipelineSpec,
        sandbox: Sandbox,
        input_names: list[str],
        cancel: StopFlag,
    ) -> None:
        self.root = root
        self.spec = spec
        self.cancel = cancel
        self.names = input_names
        self.pfs = root / "pfs"
        self.out = self.pfs / "out"
        for name in input_names:
            (self.pfs / name).mkdir(parents=True, exist_ok=True)
        self.out.mkdir(parents=True, exist_ok=True)
        (root / "ctl").mkdir(exist_ok=True)
        self.batch = spec.datum_batching
        self.argv, self.env = build(sandbox, spec, root, input_names, self.batch)
        self.inside = sandbox.kind != "direct"
        self.user = sandbox.user
        self.direct = sandbox.kind == "direct"
        if self.user is not None:
            # The code's user owns only what it writes: the output, the control directory
            # (the FIFO) and, when direct, its home; the rest stays the runner's, read-only.
            for d in (self.out, root / "ctl", root / "home"):
                if d.exists():
                    os.chown(d, *self.user)
            for d in (root, root.parent):
                os.chmod(d, os.stat(d).st_mode | 0o111)  # passable, not listable
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        # batch mode
        self._log = bytearray()
        self._replies = bytearray()
        self._out_open = False
        self._fifo_fd: int | None = None

    # --- the datum's directories -------------------------------------------------------------

    def input_dir(self, name: str) -> Path:
        return self.pfs / name

    def reset(self) -> None:
        """Empty every input and the output, keeping the directories (batch sandboxes bind them)."""
        for name in self.names:
            _empty(self.pfs / name)
        _empty(self.out)

    def take_output(self, dest: Path) -> None:
        """Move what the datum wrote out of the way, cheaply (a rename per top-level entry)."""
        dest.mkdir(parents=True, exist_ok=True)
        for child in os.scandir(self.out):
            os.rename(child.path, dest / child.name)

    # --- running -----------------------------------------------------------------------------

    def run(self, datum_id: str, timeout: float | None) -> Attempt:
        if self.cancel.is_set():
            raise Cancelled()
        if self.batch:
            return self._run_batched(datum_id, timeout)
        return self._run_once(timeout)

    def own(self, path: Path) -> None:
        """Give an input the code's user, so input files of any mode stay readable to it (the
        inputs are bound read-only, so owning them grants no writing)."""
        if self.user is not None:
            os.chown(path, *self.user, follow_symlinks=False)

    def _spawn(self, stdin: int) -> subprocess.Popen:
        # Direct mode has no setpriv step: the process itself is started as the user.
        user = self.user if self.direct else None
        return subprocess.Popen(
            self.argv,
            env=self.env,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=str(self.pfs),
            user=user[0] if user else None,
            group=user[1] if user else None,
            extra_groups=[] if user else None,
        )

    def _run_once(self, timeout: float | None) -> Attempt:
        t0 = time.monotonic()
        stdin_data = ("\n".join(self.spec.transform.stdin) + "\n").encode()
        has_stdin = bool(self.spec.transform.stdin)
        try:
            proc = self._spawn(subprocess.PIPE if has_stdin else subprocess.DEVNULL)
        except OSError as e:
            return Attempt(False, f"cannot start {self.argv[0]}: {e.strerror}", b"", 0.0)
        with self._lock:
            self._proc = proc
        chunks: list[bytes] = []
        reader = threading.Thread(target=_drain, args=(proc, chunks), daemon=True)
        reader.start()
        if has_stdin:
            try:
                proc.stdin.write(stdin_data)
                proc.stdin.close()
            except BrokenPipeError:
                pass
        error = ""
        deadline = None if timeout is None else t0 + timeout
        while True:
            try:
                code = proc.wait(timeout=0.05)
                break
            except subprocess.TimeoutExpired:
                pass
            if self.cancel.is_set():
                self._kill(proc)
                raise Cancelled()
            if deadline is not None and time.monotonic() > deadline:
                self._kill(proc)
                proc.wait()
                error = f"timed out after {timeout:g} s (datum_timeout)"
                code = None
                break
        reader.join(timeout=5)
        with self._lock:
            self._proc = None
        log = b"".join(chunks)[-LOG_LIMIT:]
        if not error and code != 0:
            error = _exit_text(code)
        return Attempt(not error, error, log, time.monotonic() - t0)

    # --- batching ----------------------------------------------------------------------------
    #
    # One thread does all of a batching worker's reading, with select() over the process's
    # output and the FIFO: a reply is only acted on after the output pipe has been drained, and
    # the helper flushes before it replies, so everything written while a datum was in progress
    # is in its log and nothing of it in the next one's. No reader threads means nothing can be
    # left blocked on a descriptor when the worker closes.

    def _ensure_batch_process(self) -> subprocess.Popen:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        self._stop_batch_process()
        fifo = self.root / "ctl" / "done"
        if self._fifo_fd is None:
            if not fifo.exists():
                os.mkfifo(fifo)
                if self.user is not None:
                    os.chown(fifo, *self.user)
            # Read-write so the FIFO never reports end-of-file between writers, and opening it
            # does not wait for one; non-blocking so a read never outlives the worker.
            self._fifo_fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
        # Lines a dead process left behind belong to no datum of the fresh one.
        self._drain_fd(self._fifo_fd)
        self._replies = bytearray()
        proc = self._spawn(subprocess.PIPE)
        assert proc.stdout is not None
        os.set_blocking(proc.stdout.fileno(), False)
        with self._lock:
            self._proc = proc
        self._log = bytearray()
        self._out_open = True
        return proc

    @staticmethod
    def _drain_fd(fd: int, reads: int = 1 << 30) -> bytes | None:
        """What can be read now without waiting (in at most `reads` reads, so a process that
        never stops writing cannot hold the loop); None at end-of-file."""
        got = bytearray()
        for _ in range(reads):
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return bytes(got)
            if not data:
                return bytes(got) if got else None
            got += data
        return bytes(got)

    def _read_output(self, proc: subprocess.Popen, reads: int = 1 << 30) -> None:
        """Move what the process has written so far into the log."""
        if not self._out_open:
            return
        assert proc.stdout is not None
        data = self._drain_fd(proc.stdout.fileno(), reads)
        if data is None:
            self._out_open = False
            return
        self._log += data
        if len(self._log) > 2 * LOG_LIMIT:
            del self._log[:-LOG_LIMIT]

    def _next_reply(self) -> str | None:
        if b"\n" not in self._replies:
            return None
        line, _, rest = bytes(self._replies).partition(b"\n")
        self._replies = bytearray(rest)
        return line.decode(errors="replace").strip()

    def _take_log(self) -> bytes:
        out = bytes(self._log[-LOG_LIMIT:])
        self._log = bytearray()
        return out

    def _run_batched(self, datum_id: str, timeout: float | None) -> Attempt:
        t0 = time.monotonic()
        try:
            proc = self._ensure_batch_process()
        except OSError as e:
            return Attempt(False, f"cannot start {self.argv[0]}: {e.strerror}", b"", 0.0)
        assert self._fifo_fd is not None and proc.stdout is not None
        pfs = "/pfs" if self.inside else str(self.pfs)
        line = {
            "id": datum_id,
            "inputs": {n: f"{pfs}/{n}" for n in self.names},
            "out": f"{pfs}/out",
        }
        try:
            assert proc.stdin is not None
            proc.stdin.write((json.dumps(line) + "\n").encode())
            proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it died: reported below with its exit status
        deadline = None if timeout is None else t0 + timeout

        def result(ok: bool, error: str) -> Attempt:
            return Attempt(ok, error, self._take_log(), time.monotonic() - t0)

        while True:
            reply = self._next_reply()
            if reply is not None:
                # The reply was written after the output it follows: drain that first.
                self._read_output(proc)
                return self._judge(proc, datum_id, reply, result)
            fds = [self._fifo_fd] + ([proc.stdout.fileno()] if self._out_open else [])
            ready, _, _ = select.select(fds, [], [], 0.05)
            if proc.stdout.fileno() in ready:
                self._read_output(proc, reads=16)
            if self._fifo_fd in ready:
                self._replies += self._drain_fd(self._fifo_fd) or b""
                continue
            if self.cancel.is_set():
                self._kill(proc)
                raise Cancelled()
            code = proc.poll()
            if code is not None:
                self._replies += self._drain_fd(self._fifo_fd) or b""
                if b"\n" in self._replies:
                    continue  # it replied, then exited: the reply counts
                self._read_output(proc)
                return result(False, _exit_text(code) + " before reporting the datum done")
            if deadline is not None and time.monotonic() > deadline:
                self._kill(proc)
                proc.wait()
                self._read_output(proc)
                return result(False, f"timed out after {timeout:g} s (datum_timeout)")

    def _judge(
        self,
        proc: subprocess.Popen,
        datum_id: str,
        reply: str,
        result: Callable[[bool, str], Attempt],
    ) -> Attempt:
        """A reply must name the datum it completes, so a stray or repeated line can never
        complete another datum; one that does not is a protocol error, and the process, whose
        place in the stream is now unknown, is replaced."""
        if reply == datum_id:
            return result(True, "")
        words = reply.split(maxsplit=2)
        if len(words) >= 2 and words[0] == "error" and words[1] == datum_id:
            return result(False, reply)
        self._kill(proc)
        proc.wait()
        self._read_output(proc)
        return result(
            False,
            f"protocol error: expected {datum_id!r} or 'error {datum_id} <message>' on "
            f"$COWFS_DONE, got {reply[:200]!r}",
        )

    # --- stopping ----------------------------------------------------------------------------

    def _kill(self, proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _stop_batch_process(self) -> None:
        """End the batch process (stdin closed: a well-behaved one exits; else killed) and
        close its pipes, each once."""
        with self._lock:
            proc = self._proc
            self._proc = None
        if proc is None:
            return
        if proc.poll() is None and proc.stdin is not None:
            try:
                proc.stdin.close()  # end of datums: a well-behaved process exits now
                proc.wait(timeout=2)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if proc.poll() is None:
            self._kill(proc)
            proc.wait()
        for f in (proc.stdin, proc.stdout):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass

    def close(self) -> None:
        if self.batch:
            self._stop_batch_process()
            if self._fifo_fd is not None:
                os.close(self._fifo_fd)
                self._fifo_fd = None
            return
        with self._lock:
            proc = self._proc
            self._proc = None
        if proc is not None and proc.poll() is None:
            self._kill(proc)
            proc.wait()


def _drain(proc: subprocess.Popen, chunks: list[bytes]) -> None:
    assert proc.stdout is not None
    total = 0
    for data in iter(lambda: proc.stdout.read1(65536), b""):
        chunks.append(data)
        total += len(data)
        while total > 2 * LOG_LIMIT and len(chunks) > 1:
            total -= len(chunks.pop(0))


def _exit_text(code: int | None) -> str:
    if code is None:
        return "did not finish"
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


def _empty(d: Path) -> None:
    for child in os.scandir(d):
        if child.is_dir(follow_symlinks=False):
            shutil.rmtree(child.path)
        else:
            os.unlink(child.path)
