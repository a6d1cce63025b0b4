"""One worker: a directory laid out as `/pfs`, and the process that runs datums in it.

A worker handles one datum at a time: the executor fills `pfs/<input>`, the worker runs the
code (a fresh process per datum, or with batching one long-lived process fed through the protocol
in `cowfs.pipelines.batch`), and the datum's output is moved out of `pfs/out` so the next datum
starts empty. Processes get their own session so a timeout kills everything they started.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
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
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        # batch mode
        self._done: queue.Queue[str] = queue.Queue()
        self._log = bytearray()
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

    def _spawn(self, stdin: int) -> subprocess.Popen:
        return subprocess.Popen(
            self.argv,
            env=self.env,
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=str(self.pfs),
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

    def _ensure_batch_process(self) -> subprocess.Popen:
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                return self._proc
        fifo = self.root / "ctl" / "done"
        if self._fifo_fd is None:
            if not fifo.exists():
                os.mkfifo(fifo)
            # Read-write so the FIFO never reports end-of-file between writers.
            self._fifo_fd = os.open(fifo, os.O_RDWR)
            threading.Thread(target=self._read_done, daemon=True).start()
        while not self._done.empty():
            self._done.get_nowait()
        proc = self._spawn(subprocess.PIPE)
        with self._lock:
            self._proc = proc
            self._log = bytearray()
        threading.Thread(target=self._read_log, args=(proc,), daemon=True).start()
        return proc

    def _read_done(self) -> None:
        with os.fdopen(self._fifo_fd, "rb", buffering=0, closefd=False) as f:
            buf = b""
            while True:
                try:
                    data = f.read(4096)
                except OSError:
                    return
                if not data:
                    return
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    self._done.put(line.decode(errors="replace"))

    def _read_log(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for data in iter(lambda: proc.stdout.read1(65536), b""):
            with self._lock:
                self._log += data
                if len(self._log) > 2 * LOG_LIMIT:
                    del self._log[:-LOG_LIMIT]

    def _take_log(self) -> bytes:
        with self._lock:
            out = bytes(self._log[-LOG_LIMIT:])
            self._log = bytearray()
        return out

    def _run_batched(self, datum_id: str, timeout: float | None) -> Attempt:
        t0 = time.monotonic()
        try:
            proc = self._ensure_batch_process()
        except OSError as e:
            return Attempt(False, f"cannot start {self.argv[0]}: {e.strerror}", b"", 0.0)
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
        while True:
            try:
                reply = self._done.get(timeout=0.05)
            except queue.Empty:
                reply = None
            if reply is not None:
                reply = reply.strip()
                if reply.startswith("error"):
                    return Attempt(False, reply, self._take_log(), time.monotonic() - t0)
                return Attempt(True, "", self._take_log(), time.monotonic() - t0)
            if self.cancel.is_set():
                self._kill(proc)
                raise Cancelled()
            code = proc.poll()
            if code is not None:
                time.sleep(0.02)  # let the log reader catch the last words
                if not self._done.empty():
                    continue
                error = _exit_text(code) + " before reporting the datum done"
                return Attempt(False, error, self._take_log(), time.monotonic() - t0)
            if deadline is not None and time.monotonic() > deadline:
                self._kill(proc)
                proc.wait()
                error = f"timed out after {timeout:g} s (datum_timeout)"
                return Attempt(False, error, self._take_log(), time.monotonic() - t0)

    # --- stopping ----------------------------------------------------------------------------

    def _kill(self, proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def close(self) -> None:
        with self._lock:
            proc = self._proc
            self._proc = None
        if proc is not None and proc.poll() is None:
            if self.batch and proc.stdin is not None:
                try:
                    proc.stdin.close()  # end of datums: a well-behaved process exits now
                    proc.wait(timeout=2)
                except (OSError, subprocess.TimeoutExpired):
                    pass
            if proc.poll() is None:
                self._kill(proc)
                proc.wait()
        if self._fifo_fd is not None:
            try:
                os.write(self._fifo_fd, b"")
                os.close(self._fifo_fd)
            except OSError:
                pass
            self._fifo_fd = None


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
