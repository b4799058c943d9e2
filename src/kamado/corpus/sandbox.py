"""Run a function in a child process with a deadline per call, so one pathological page cannot stall a worker.

HTML extraction is Python and lxml code whose running time depends on the page: a page of 100k nested tags or a
giant table can take minutes. A signal alarm cannot interrupt lxml's C code and only works in the main thread;
a thread cannot be killed. A child process can. The child is forked once and serves calls until one overruns its
deadline or kills the child (out of memory, a crash in C), then it is replaced at the next call.

This is datatrove's `ExtractorSandbox` idea with two differences. Requests and replies cross the pipe as JSON
bytes (`Connection.send_bytes`), never as pickles. And the deadline counts the child's CPU time, not wall time
(on Linux, from /proc): on a loaded machine a page is not dropped because other processes held the cores, so the
output does not depend on the load. A child that stops computing (blocked, starved) is still stopped after
`wall_factor` × the deadline of wall time. Elsewhere the deadline is wall time. Linux and macOS only (fork).
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.connection
import os
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

JsonFunction = Callable[[Any], Any]


class SandboxCrashed(RuntimeError):
    """The child process died while handling a call."""


class SandboxCallFailed(RuntimeError):
    """The function raised in the child; the message names the exception."""


def _dump(obj: Any) -> bytes:
    # surrogatepass: a lone surrogate in a page must not turn into a crash of the pipe
    return json.dumps(obj, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _load(data: bytes) -> Any:
    return json.loads(data.decode("utf-8", "surrogatepass"))


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process `pid` so far (None where /proc is missing, e.g. macOS)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()  # after "pid (comm)": state is field 3
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime (fields 14 and 15)


def _serve(conn: multiprocessing.connection.Connection, fn: JsonFunction) -> None:
    while True:
        try:
            request = _load(conn.recv_bytes())
        except EOFError:
            return
        try:
            reply = {"ok": fn(request)}
        except Exception as e:  # reported to the parent, which counts it; the child keeps serving
            reply = {"error": f"{type(e).__name__}: {e}"}
        conn.send_bytes(_dump(reply))


class TimeoutSandbox:
    """`call(request)` runs `fn(request)` in the child; JSON-serialisable in and out.

    Raises TimeoutError once the call has used `timeout_s` seconds of CPU time, or `wall_factor` × `timeout_s` of
    wall time (the child is killed), SandboxCrashed if the child died, and SandboxCallFailed carrying the message
    of an exception raised by `fn`."""

    def __init__(self, fn: JsonFunction, timeout_s: float, wall_factor: float = 5.0):
        assert timeout_s > 0 and wall_factor >= 1, "timeout_s must be positive and wall_factor >= 1"
        self.fn = fn
        self.timeout_s = timeout_s
        self.wall_factor = wall_factor
        self._process: Any = None
        self._conn: multiprocessing.connection.Connection | None = None

    def _start(self) -> multiprocessing.connection.Connection:
        ctx = multiprocessing.get_context("fork")
        parent, child = ctx.Pipe()
        self._process = ctx.Process(target=_serve, args=(child, self.fn), daemon=True)
        self._process.start()
        child.close()
        self._conn = parent
        return parent

    def call(self, request: Any) -> Any:
        conn = self._conn if self._process is not None and self._process.is_alive() else None
        if conn is None:
            self.close()
            conn = self._start()
        try:
            cpu0 = cpu_seconds(self._process.pid)
            conn.send_bytes(_dump(request))
            if not self._wait(conn, cpu0):
                self.close()
                raise TimeoutError(f"no reply within {self.timeout_s} s")
            reply = _load(conn.recv_bytes())
        except (EOFError, BrokenPipeError, ConnectionResetError):
            self.close()
            raise SandboxCrashed("the sandbox process died") from None
        if "error" in reply:
            raise SandboxCallFailed(reply["error"])
        return reply["ok"]

    def _wait(self, conn: multiprocessing.connection.Connection, cpu0: float | None) -> bool:
        """True when a reply is ready before the deadline (CPU time where measurable, else wall time)."""
        if conn.poll(self.timeout_s):  # the child cannot have used more CPU than the wall time that passed
            return True
        if cpu0 is None:
            return False
        wall_end = time.monotonic() + (self.wall_factor - 1) * self.timeout_s
        while time.monotonic() < wall_end:
            used = cpu_seconds(self._process.pid)
            if used is None or used - cpu0 >= self.timeout_s:
                return conn.poll(0)
            if conn.poll(min(0.05, max(self.timeout_s - (used - cpu0), 0.001))):
                return True
        return conn.poll(0)

    def close(self) -> None:
        """Stop the child (if any); the next call starts a fresh one."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._process is not None:
            if self._process.is_alive():
                self._process.kill()
            self._process.join(timeout=5)
            self._process = None

    def __enter__(self) -> TimeoutSandbox:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
