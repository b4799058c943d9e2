"""Run a function in a child process with a deadline per call, so one pathological page cannot stall a worker.

HTML extraction is Python and lxml code whose running time depends on the page: a page of 100k nested tags or a
giant table can take minutes. A signal alarm cannot interrupt lxml's C code and only works in the main thread;
a thread cannot be killed. A child process can. The child is forked once and serves calls until one overruns its
deadline or kills the child (out of memory, a crash in C), then it is replaced at the next call.

This is datatrove's `ExtractorSandbox` idea with one difference: requests and replies cross the pipe as JSON
bytes (`Connection.send_bytes`), never as pickles. Linux and macOS only (fork).
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.connection
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

    Raises TimeoutError after `timeout_s` seconds (the child is killed), SandboxCrashed if the child died, and
    SandboxCallFailed carrying the message of an exception raised by `fn`."""

    def __init__(self, fn: JsonFunction, timeout_s: float):
        assert timeout_s > 0, "timeout_s must be positive"
        self.fn = fn
        self.timeout_s = timeout_s
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
            conn.send_bytes(_dump(request))
            if not conn.poll(self.timeout_s):
                self.close()
                raise TimeoutError(f"no reply within {self.timeout_s} s")
            reply = _load(conn.recv_bytes())
        except (EOFError, BrokenPipeError, ConnectionResetError):
            self.close()
            raise SandboxCrashed("the sandbox process died") from None
        if "error" in reply:
            raise SandboxCallFailed(reply["error"])
        return reply["ok"]

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
