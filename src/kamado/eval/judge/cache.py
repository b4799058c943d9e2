"""Judge replies on disk, so a rerun never pays for a judgment twice.

The key is a SHA-256 of (question, answer, judge model, the full prompt: system and user text); the value is the
judge's reply text. Only replies are kept: a call that failed (HTTP error, unreachable) is not, so a rerun asks
again for exactly those. A reply without a parseable rating *is* kept: the judge answered, and at temperature 0
asking again would pay for the same reply.

The file is JSONL, one {"key", "judge", "reply"} per line, appended with one `write` on an O_APPEND descriptor and
fsynced: a process killed mid-write leaves at most a torn last line, which the next load skips (and the next
append starts on a fresh line). Threads share one cache through a lock.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from kamado.eval.judge.benchmarks import iter_jsonl


def judgment_key(question: Sequence[str], answer: Sequence[str], judge_model: str, prompt: Sequence[str]) -> str:
    """Hash of what decides a judgment: the question's turns, the answer(s), the judge, the prompt messages."""
    blob = json.dumps([list(question), list(answer), judge_model, list(prompt)], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class JudgmentCache:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.replies: dict[str, str] = {
            r["key"]: r["reply"]
            for r in iter_jsonl(self.path)
            if isinstance(r, dict) and isinstance(r.get("key"), str) and isinstance(r.get("reply"), str)
        }
        self.lock = threading.Lock()
        self.hits = 0

    def get(self, key: str) -> str | None:
        with self.lock:
            reply = self.replies.get(key)
            self.hits += reply is not None
            return reply

    def put(self, key: str, judge_model: str, reply: str) -> None:
        line = json.dumps({"key": key, "judge": judge_model, "reply": reply}, ensure_ascii=False) + "\n"
        with self.lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                size = os.fstat(fd).st_size
                if size and not _ends_with_newline(self.path, size):
                    line = "\n" + line  # after a torn line
                os.write(fd, line.encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
            self.replies[key] = reply


def _ends_with_newline(path: Path, size: int) -> bool:
    with open(path, "rb") as f:
        f.seek(size - 1)
        return f.read(1) == b"\n"
