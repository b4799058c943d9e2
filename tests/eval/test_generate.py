"""Where evaluation answers come from: the local engine (batched, in order, nothing dropped) and an OpenAI-compatible
endpoint (a real HTTP server in a thread: the request it receives, retries, errors kept as completions)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from kamado.config import ModelConfig, TokenizerConfig
from kamado.data.jsonl import iter_texts
from kamado.errors import ConfigError
from kamado.eval.generate import EndpointGenerator, EngineGenerator, Prompt, common_prefix
from kamado.model.transformer import Transformer
from kamado.serve.engine import Engine, GenParams
from kamado.tokenizer import Tokenizer
from kamado.tokenizer.train import train_tokenizer

SAMPLE = Path(__file__).parents[2] / "samples" / "ja_aozora.jsonl.gz"


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> Tokenizer:
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(list(iter_texts(SAMPLE)), out, TokenizerConfig(vocab_size=400, max_train_chars=200_000))
    return Tokenizer.load(out)


@pytest.fixture(scope="module")
def model(tok: Tokenizer) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(tok.vocab_size, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=128, max_seq_len=96)
    return Transformer(cfg).eval()


def test_engine_generator_matches_the_engine_in_order_and_keeps_too_long_prompts(model, tok) -> None:
    texts = ["吾輩は猫である。", "名前はまだ無い。" * 3, "どこで生れたか" * 40, "とんと見当がつかぬ。"]
    prompts = [Prompt(text=t, max_tokens=12) for t in texts]
    got = EngineGenerator(model, tok, progress=False, max_batch=2).generate(prompts)
    ids = [tok.encode(t) for t in texts]
    assert len(ids[2]) >= 96  # the third does not fit the context of 96
    assert [c.finish_reason for c in got][2] == "too_long" and got[2].text == ""
    fits = [i for i in ids if len(i) < 96]
    want = Engine(model, tok, max_batch=4).generate(fits, GenParams(max_tokens=12, temperature=0.0))
    assert [c.text for i, c in enumerate(got) if i != 2] == [r.text for r in want]
    assert all(c.completion_tokens == 12 and c.finish_reason == "length" for i, c in enumerate(got) if i != 2)


def test_engine_generator_clips_the_budget_to_the_context(model, tok) -> None:
    text = "吾輩は猫である。" * 8
    n = len(tok.encode(text))
    assert n < 90
    (c,) = EngineGenerator(model, tok, progress=False).generate([Prompt(text=text, max_tokens=500)])
    assert c.completion_tokens == 96 - n and c.finish_reason == "length"


def test_chat_prompts_are_rendered_by_the_template(model, tok) -> None:
    msgs = [{"role": "user", "content": "こんにちは"}]
    (c,) = EngineGenerator(model, tok, progress=False).generate([Prompt.chat(msgs, max_tokens=4)])
    assert c.prompt_tokens == len(tok.encode_chat(msgs))


class Handler(BaseHTTPRequestHandler):
    script: Iterator[tuple[int, object]]  # (status, body) per request
    seen: list[tuple[str, dict]]

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append((self.path, {**body, "auth": self.headers.get("Authorization")}))
        status, reply = next(type(self).script)
        data = reply.encode() if isinstance(reply, str) else json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def server():
    Handler.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd, f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()


def chat_reply(text: str) -> dict:
    return {"choices": [{"message": {"content": text}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 5}}


def test_endpoint_sends_openai_requests_retries_and_keeps_errors(server, monkeypatch) -> None:
    _, url = server
    Handler.script = iter(
        [
            (200, chat_reply("一つ目")),
            (503, {"error": "busy"}),  # retried ...
            (200, {"choices": [{"text": "二つ目", "finish_reason": "length"}]}),  # ... and answered
            (400, {"error": {"message": "bad request"}}),  # not retried: kept as an error
            (200, "not json"),
        ]
    )
    monkeypatch.setenv("MY_KEY", "sk-test")
    gen = EndpointGenerator(url, "m", api_key_env="MY_KEY", concurrency=1, retries=1, progress=False)
    monkeypatch.setattr("kamado.eval.generate.time.sleep", lambda s: None)
    prompts = [
        Prompt.chat([{"role": "user", "content": "a"}], max_tokens=7, stop=("\n\n",)),
        Prompt(text="b", max_tokens=3),
        Prompt(text="c", max_tokens=3),
        Prompt(text="d", max_tokens=3),
    ]
    got = gen.generate(prompts)
    assert [(c.text, c.finish_reason) for c in got[:2]] == [("一つ目", "stop"), ("二つ目", "length")]
    assert got[0].prompt_tokens == 5
    assert got[2].finish_reason == "error" and "HTTP 400" in got[2].error and "bad request" in got[2].error
    assert got[3].finish_reason == "error" and "not JSON" in got[3].error
    path, body = Handler.seen[0]
    assert path == "/v1/chat/completions" and body["messages"] == [{"role": "user", "content": "a"}]
    assert (body["model"], body["max_tokens"], body["temperature"], body["stop"]) == ("m", 7, 0.0, ["\n\n"])
    assert body["auth"] == "Bearer sk-test"
    assert [p for p, _ in Handler.seen[1:]] == ["/v1/completions"] * 4 and Handler.seen[2][1]["prompt"] == "b"


def test_an_unreachable_endpoint_stops_at_once() -> None:
    gen = EndpointGenerator("http://127.0.0.1:9/v1", "m", retries=0, progress=False)
    with pytest.raises(ConfigError, match="cannot be reached"):
        gen.generate([Prompt(text="a", max_tokens=1)] * 50)
    with pytest.raises(ConfigError, match="http"):
        EndpointGenerator("localhost:8000", "m")


def test_a_shared_prefix_is_computed_once_and_changes_nothing(model, tok, monkeypatch) -> None:
    head = "以下は、タスクを説明する指示です。"
    texts = [head + t for t in ("吾輩は猫である。", "名前はまだ無い。", "どこで生れたか", head)]
    prompts = [Prompt(text=t, max_tokens=10) for t in texts]
    gen = EngineGenerator(model, tok, progress=False, max_batch=2)  # slots are reused: the prefix is copied again
    calls = []
    real = Engine.cache_prefix
    monkeypatch.setattr(Engine, "cache_prefix", lambda self, ids: calls.append(len(ids)) or real(self, ids))
    got = gen.generate(prompts)
    assert calls == [len(tok.encode(head))] or calls == [common_prefix([tok.encode(t) for t in texts])]
    assert calls[0] >= 16
    want = Engine(model, tok, max_batch=4).generate([tok.encode(t) for t in texts], GenParams(10, temperature=0.0))
    assert [c.text for c in got] == [r.text for r in want]


def test_a_prompt_must_start_with_its_prefix(model, tok) -> None:
    engine = Engine(model, tok, max_batch=2)
    prefix = engine.cache_prefix(tok.encode("吾輩は猫である。"))
    with pytest.raises(ValueError, match="does not start with"):
        engine.submit(tok.encode("名前はまだ無い。"), GenParams(4), prefix=prefix)
    with pytest.raises(ValueError, match="a prefix needs"):
        engine.cache_prefix([])
