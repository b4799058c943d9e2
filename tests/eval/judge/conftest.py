"""Real local HTTP servers speaking OpenAI's chat completions API, as judges and as the model being evaluated.

`OpenAIServer(reply)` serves /v1/chat/completions from a thread; `reply(body)` returns the answer text, or
(status, text) for an error. Every request body is recorded, so a test can count the calls a run made.
"""

from __future__ import annotations

import gzip
import json
import shutil
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[3]
SAMPLES = REPO / "samples" / "eval"

Reply = Callable[[dict[str, Any]], "str | tuple[int, str]"]


class OpenAIServer:
    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
                out = outer.reply(body) if self.path == "/v1/chat/completions" else (404, "no such path")
                status, text = out if isinstance(out, tuple) else (200, out)
                if status == 200:
                    msg = {"role": "assistant", "content": text}
                    payload: dict[str, Any] = {
                        "id": "chatcmpl-test",
                        "object": "chat.completion",
                        "model": body.get("model"),
                        "choices": [{"index": 0, "message": msg, "finish_reason": "stop"}],
                        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                    }
                else:
                    payload = {"error": {"message": text, "type": "server_error"}}
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def data_subset(dest: Path, bench_folder: str, question_file: str, ids: list[Any]) -> Path:
    """A copy of samples/eval whose `bench_folder` keeps only the questions `ids`, in that order (plain JSONL)."""
    shutil.copytree(SAMPLES, dest, ignore=shutil.ignore_patterns("jaster"))
    gz = dest / bench_folder / f"{question_file}.gz"
    with gzip.open(gz, "rt", encoding="utf-8") as f:
        rows = {r["question_id"]: r for r in map(json.loads, f)}
    gz.unlink()
    text = "".join(json.dumps(rows[i], ensure_ascii=False) + "\n" for i in ids)
    (dest / bench_folder / question_file).write_text(text, encoding="utf-8")
    return dest


def user_text(body: dict[str, Any]) -> str:
    return body["messages"][-1]["content"]


def good_judge(body: dict[str, Any]) -> str:
    """Turn 1 [[8]], turn 2 [[6]] (MT-Benches); grade 4 in a fenced JSON (ELYZA); Rakuda: always the answer shown
    first ("1" on the last line), the purest position bias."""
    text = user_text(body)
    if "アシスタント1" in text:
        return "どちらも良い回答ですが、アシスタント1の回答がより詳細です。\n1"
    if '"grade"' in text:
        return '```json\n{"reason": "概ね正しい", "grade": 4}\n```'
    if "### User:" in text:  # the multi-turn templates show the conversation
        return "The second answer is fine. Rating: [[6]]"
    return "説明：よくできています。評価：[[8]]"


def malformed_judge(body: dict[str, Any]) -> str:
    return "I cannot decide; the answer is somewhat good. Rating: eight out of ten"


def failing_judge(body: dict[str, Any]) -> tuple[int, str]:
    return 500, "the judge is down"


def stub_answer(body: dict[str, Any]) -> str:
    """The evaluated model: echoes the start of the last question; an ELYZA question about 熱意 gets an empty
    answer (ELYZA's "No response" rule)."""
    q = user_text(body)
    if "熱意" in q:
        return ""
    turn = sum(m["role"] == "user" for m in body["messages"])
    return f"STUB turn {turn}: {' '.join(q.split())[:30]}"


@pytest.fixture
def serve() -> Iterator[Callable[[Reply], OpenAIServer]]:
    servers: list[OpenAIServer] = []

    def start(reply: Reply) -> OpenAIServer:
        servers.append(OpenAIServer(reply))
        return servers[-1]

    yield start
    for s in servers:
        s.close()
