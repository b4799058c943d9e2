"""`kamado serve` against the official `openai` client and raw HTTP: a real uvicorn server on a free loopback port.

Answers are checked against the engine's own greedy output for the same token ids; a burst of valid and malformed
requests gets only well-formed answers; a client that goes away frees its slot; the API key is enforced."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from types import SimpleNamespace
from typing import Any

import httpx
import openai
import pytest

from kamado.serve.engine import Engine, GenParams
from kamado.serve.load import load_for_serving
from kamado.serve.server import create_app

from .live import LiveServer


@pytest.fixture(scope="module")
def live(served_run):
    model, tok, name = load_for_serving(served_run)
    engine = Engine(model, tok, max_batch=4)
    ref_model, _, _ = load_for_serving(served_run)  # the reference decodes on its own copy, in this thread
    with LiveServer(create_app(engine, tok, name)) as url:
        yield SimpleNamespace(url=url, engine=engine, tok=tok, name=name, ref=Engine(ref_model, tok, max_batch=1))


def client(url: str, key: str = "none") -> Any:  # Any: the answers' optional fields are checked by the tests
    return openai.OpenAI(base_url=url + "v1", api_key=key, max_retries=0, timeout=60)


def greedy(live, ids, max_tokens, chat=True, **kw):
    stops = (live.tok.token_id("<|im_end|>"),) if chat else ()
    params = GenParams(max_tokens=max_tokens, temperature=0, stop_token_ids=stops, **kw)
    return live.ref.generate([ids], params)[0]


MESSAGES = [
    {"role": "system", "content": "丁寧に答えてください。"},
    {"role": "user", "content": "吾輩は猫である。名前は"},
]


def test_chat_completion_is_the_engines_greedy_answer_with_usage(live):
    want = greedy(live, live.tok.encode_chat(MESSAGES), 24)
    r = client(live.url).chat.completions.create(model=live.name, messages=MESSAGES, temperature=0, max_tokens=24)
    assert r.object == "chat.completion" and r.model == live.name and r.id.startswith("chatcmpl-")
    (c,) = r.choices
    assert c.index == 0 and c.message.role == "assistant"
    assert c.message.content == want.text and want.text
    assert c.finish_reason == want.finish_reason == "length"
    n_prompt = len(live.tok.encode_chat(MESSAGES))
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (n_prompt, len(want.token_ids)) == (n_prompt, 24)
    assert r.usage.total_tokens == n_prompt + 24


def test_max_completion_tokens_limits_a_chat_answer(live):
    r = client(live.url).chat.completions.create(messages=MESSAGES, model=live.name, max_completion_tokens=5)
    assert r.usage.completion_tokens == 5 and r.choices[0].finish_reason == "length"


def test_streamed_chat_adds_up_to_the_greedy_answer_and_ends_with_usage(live):
    want = greedy(live, live.tok.encode_chat(MESSAGES), 30)
    chunks = list(
        client(live.url).chat.completions.create(
            model=live.name, messages=MESSAGES, temperature=0, max_tokens=30, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want.text
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert reasons == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 30 == len(want.token_ids)
    assert chunks[-1].usage.prompt_tokens == len(live.tok.encode_chat(MESSAGES))
    assert all(c.usage is None for c in chunks[:-1])


def test_the_raw_event_stream_is_openais_format(live):
    body = {"messages": MESSAGES, "max_tokens": 4, "stream": True}
    with httpx.stream("POST", live.url + "v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(e.startswith("data: {") for e in events[:-2])
    assert all("usage" not in json.loads(e[6:]) for e in events[:-2])  # not asked for


def test_completions_plain_and_streamed_continue_the_prompt_greedily(live):
    prompt = "吾輩は猫である。"
    ids = live.tok.encode(prompt)
    want = greedy(live, ids, 12, chat=False)
    c = client(live.url)
    r = c.completions.create(model=live.name, prompt=prompt, max_tokens=12, temperature=0)
    assert r.object == "text_completion" and r.choices[0].text == want.text and want.text
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (len(ids), 12, len(ids) + 12)
    assert r.choices[0].finish_reason == "length"
    chunks = list(c.completions.create(model=live.name, prompt=prompt, max_tokens=12, temperature=0, stream=True))
    assert "".join(ch.choices[0].text for ch in chunks) == want.text
    assert chunks[-1].choices[0].finish_reason == "length"
    default = c.completions.create(model=live.name, prompt=ids, temperature=0)  # token ids; OpenAI's default 16
    assert default.usage.completion_tokens == 16 and default.choices[0].text.startswith(want.text)


def test_n_choices_are_separate_requests_with_seeds_seed_plus_i(live):
    ids = live.tok.encode_chat(MESSAGES)
    c = client(live.url)
    r = c.chat.completions.create(model=live.name, messages=MESSAGES, n=3, temperature=1.0, seed=11, max_tokens=10)
    stops = (live.tok.token_id("<|im_end|>"),)
    want = [
        live.ref.generate([ids], GenParams(max_tokens=10, temperature=1.0, seed=11 + i, stop_token_ids=stops))[0]
        for i in range(3)
    ]
    assert [ch.index for ch in r.choices] == [0, 1, 2]
    assert [ch.message.content for ch in r.choices] == [w.text for w in want]
    assert len({ch.message.content for ch in r.choices}) > 1  # different seeds, different answers
    assert r.usage.prompt_tokens == len(ids)  # the prompt is counted once, as OpenAI does
    assert r.usage.completion_tokens == sum(len(w.token_ids) for w in want)
    chunks = list(c.completions.create(model=live.name, prompt="猫", n=3, max_tokens=5, seed=3, stream=True))
    texts = ["".join(ch.choices[0].text for ch in chunks if ch.choices[0].index == i) for i in range(3)]
    plain = c.completions.create(model=live.name, prompt="猫", n=3, max_tokens=5, seed=3)
    assert texts == [ch.text for ch in plain.choices]
    assert sorted(ch.choices[0].index for ch in chunks if ch.choices[0].finish_reason) == [0, 1, 2]


def test_stop_strings_end_the_answer_before_them(live):
    ids = live.tok.encode_chat(MESSAGES)
    text = greedy(live, ids, 40).text
    stop = text[5:7]
    c = client(live.url)
    for given in (stop, [stop, "絶対に出ない"]):
        r = c.chat.completions.create(model=live.name, messages=MESSAGES, temperature=0, max_tokens=40, stop=given)
        assert r.choices[0].message.content == text[: text.find(stop)]
        assert r.choices[0].finish_reason == "stop"
    chunks = list(
        c.chat.completions.create(
            model=live.name, messages=MESSAGES, temperature=0, max_tokens=40, stop=stop, stream=True
        )
    )
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == text[: text.find(stop)]
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_chat_answers_end_at_the_end_of_turn_token_and_completions_do_not(live, monkeypatch):
    seen: list[GenParams] = []
    submit = live.engine.submit

    def recorded(ids: list[int], params: GenParams, loop: Any = None) -> Any:
        seen.append(params)
        return submit(ids, params, loop)

    monkeypatch.setattr(live.engine, "submit", recorded)
    c = client(live.url)
    c.chat.completions.create(model=live.name, messages=MESSAGES, max_tokens=2)
    c.completions.create(model=live.name, prompt="猫", max_tokens=2)
    assert [p.stop_token_ids for p in seen] == [(live.tok.token_id("<|im_end|>"),), ()]


def test_an_unexpected_error_is_a_500_in_openais_shape_and_the_server_lives_on(live, monkeypatch):
    def broken(*_: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(live.tok, "encode_chat", broken)
    r = httpx.post(live.url + "v1/chat/completions", json={"messages": MESSAGES}, timeout=60)
    assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
    assert "RuntimeError" in r.json()["error"]["message"]
    monkeypatch.undo()
    assert client(live.url).chat.completions.create(model=live.name, messages=MESSAGES, max_tokens=2).choices


def test_models_health_and_a_wrong_model_name(live):
    c = client(live.url)
    (m,) = c.models.list().data
    assert m.id == live.name and c.models.retrieve(live.name).id == live.name
    h = httpx.get(live.url + "health").json()
    assert h["status"] == "ok" and h["slots"] == 4
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        c.chat.completions.create(model="gpt-4o", messages=MESSAGES)


# --------------------------------------------------------------------------------------------------- the burst
def bad_requests(context: int) -> list[tuple[str, str, object]]:
    """(path, kind, body) of every malformed kind; a str body is sent as raw bytes."""
    chat, comp = "v1/chat/completions", "v1/completions"
    user = [{"role": "user", "content": "こんにちは"}]
    return [
        (chat, "malformed JSON", '{"messages": [{"role": "user", "content": "hi"}'),
        (chat, "not an object", "[1, 2]"),
        (chat, "empty body", ""),
        (chat, "unknown field", {"messages": user, "logit_bias": {"5": 1}}),
        (chat, "unknown field in a message", {"messages": [{"role": "user", "content": "x", "mood": 1}]}),
        (chat, "max_tokens as a string", {"messages": user, "max_tokens": "5"}),
        (chat, "temperature as a string", {"messages": user, "temperature": "hot"}),
        (chat, "n as a bool", {"messages": user, "n": True}),
        (chat, "messages as a string", {"messages": "hi"}),
        (chat, "content as a number", {"messages": [{"role": "user", "content": 5}]}),
        (chat, "empty messages", {"messages": []}),
        (chat, "no messages", {"max_tokens": 3}),
        (chat, "bad role", {"messages": [{"role": "wizard", "content": "x"}]}),
        (chat, "tool role", {"messages": [{"role": "tool", "content": "x"}]}),
        (chat, "missing content", {"messages": [{"role": "user"}]}),
        (chat, "prompt past the context", {"messages": [{"role": "user", "content": "猫" * context * 2}]}),
        (chat, "max_tokens 0", {"messages": user, "max_tokens": 0}),
        (chat, "max_tokens negative", {"messages": user, "max_tokens": -3}),
        (chat, "max_tokens past the context", {"messages": user, "max_tokens": context}),
        (chat, "max_completion_tokens past the context", {"messages": user, "max_completion_tokens": context}),
        (chat, "temperature negative", {"messages": user, "temperature": -0.5}),
        (chat, "temperature NaN", '{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}'),
        (chat, "top_p past 1", {"messages": user, "top_p": 1.5}),
        (chat, "n past the limit", {"messages": user, "n": 1000}),
        (chat, "content part of an image", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
        (chat, "top_p 0", {"messages": user, "top_p": 0}),
        (chat, "n 0", {"messages": user, "n": 0}),
        (chat, "empty stop string", {"messages": user, "stop": ""}),
        (chat, "five stops", {"messages": user, "stop": ["a", "b", "c", "d", "e"]}),
        (chat, "seed negative", {"messages": user, "seed": -1}),
        (chat, "stream_options without stream", {"messages": user, "stream_options": {"include_usage": True}}),
        (chat, "unknown model", {"messages": user, "model": "gpt-4o"}),
        (comp, "no prompt", {"max_tokens": 3}),
        (comp, "empty prompt", {"prompt": ""}),
        (comp, "empty prompt list", {"prompt": []}),
        (comp, "completion prompt past the context", {"prompt": "吾輩は猫である。" * context}),
        (comp, "token id outside the vocabulary", {"prompt": [5, 10**6]}),
        (comp, "prompt of floats", {"prompt": [1.5, 2.5]}),
        (comp, "completion max_tokens past the context", {"prompt": "猫", "max_tokens": context}),
        (comp, "echo (unsupported)", {"prompt": "猫", "echo": True}),
        ("v1/nothing-here", "unknown route", {"prompt": "猫"}),
    ]


def good_requests() -> list[tuple[str, str, object]]:
    chat, comp = "v1/chat/completions", "v1/completions"
    return [
        (chat, "chat", {"messages": [{"role": "user", "content": "こんにちは"}], "max_tokens": 4}),
        (chat, "chat stream", {"messages": [{"role": "user", "content": "猫"}], "max_tokens": 4, "stream": True}),
        (comp, "completion", {"prompt": "吾輩は", "max_tokens": 3, "n": 2, "seed": 1}),
        (comp, "completion stream", {"prompt": ["猫", "犬"], "max_tokens": 3, "stream": True}),
    ]


def check_error_json(r: httpx.Response, kind: str) -> None:
    assert 400 <= r.status_code < 500, (kind, r.status_code, r.text)
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}, kind
    assert isinstance(err["message"], str) and err["message"] and isinstance(err["type"], str), kind


def test_a_burst_of_valid_and_malformed_requests_gets_only_well_formed_answers(live, capsys):
    bad, good = bad_requests(live.engine.max_len), good_requests()
    mix = [(*bad[i % len(bad)], True) for i in range(150)] + [(*good[i % len(good)], False) for i in range(90)]
    mix = [mix[(i * 97) % len(mix)] for i in range(len(mix))]  # interleaved (97 is coprime with 240)
    assert len({m[1] for m in mix}) == len(bad) + len(good)

    async def one(http: httpx.AsyncClient, path: str, kind: str, body: object, is_bad: bool) -> None:
        content = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        r = await http.post(path, content=content, headers=headers)
        if is_bad:
            check_error_json(r, kind)
            return
        assert r.status_code == 200, (kind, r.text)
        if isinstance(body, dict) and body.get("stream"):
            events = r.text.split("\n\n")
            assert events[-2:] == ["data: [DONE]", ""], kind
            assert all("error" not in json.loads(e[6:]) for e in events[:-2]), kind
        else:
            assert r.json()["usage"]["completion_tokens"] > 0, kind

    async def burst() -> None:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=live.url, timeout=120, limits=limits) as http:
            await asyncio.gather(*(one(http, *m) for m in mix))

    t0 = time.perf_counter()
    asyncio.run(burst())
    took = time.perf_counter() - t0
    with capsys.disabled():
        print(f"\nburst: {len(mix)} requests ({sum(m[3] for m in mix)} malformed) in {took:.2f} s")
    assert httpx.get(live.url + "health").json()["status"] == "ok"
    assert client(live.url).chat.completions.create(model=live.name, messages=MESSAGES, max_tokens=2).choices
    assert not any(live.engine.slots) and not live.engine.waiting


def test_each_malformed_kind_names_its_problem(live):
    """Spot checks of the messages and params clients see (the burst only checks their shape)."""
    with httpx.Client(base_url=live.url, timeout=60) as http:
        answers = {kind: http.post(path, content=body if isinstance(body, str) else json.dumps(body),
                                   headers={"Content-Type": "application/json"})
                   for path, kind, body in bad_requests(live.engine.max_len)}  # fmt: skip
    for kind, r in answers.items():
        check_error_json(r, kind)
    err = {k: r.json()["error"] for k, r in answers.items()}
    assert answers["malformed JSON"].status_code == 400 and err["malformed JSON"]["code"] == "invalid_json"
    assert err["unknown field"]["param"] == "logit_bias" and "unknown" in err["unknown field"]["message"]
    assert err["max_tokens as a string"]["param"] == "max_tokens"
    assert err["bad role"]["param"] == "messages[0].role"
    assert err["empty messages"]["param"] == "messages"
    assert err["prompt past the context"]["param"] == "messages"
    assert err["prompt past the context"]["code"] == "context_length_exceeded"
    assert err["max_tokens past the context"]["param"] == "max_tokens"
    assert err["max_completion_tokens past the context"]["param"] == "max_completion_tokens"
    assert err["token id outside the vocabulary"]["param"] == "prompt"
    assert err["completion prompt past the context"]["param"] == "prompt"
    assert err["completion max_tokens past the context"]["param"] == "max_tokens"
    assert answers["unknown model"].status_code == answers["unknown route"].status_code == 404
    assert all(r.status_code == 400 for k, r in answers.items() if k not in ("unknown model", "unknown route"))


# ----------------------------------------------------------------------------------------- clients that go away
@pytest.fixture(scope="module")
def slow(served_run):
    """A server whose one slot decodes a token every 20 ms, so a long answer is still running when the client
    leaves: only a cancelled request frees the slot in time for the next one."""
    model, tok, name = load_for_serving(served_run)
    model.layers[0].register_forward_pre_hook(lambda *_: time.sleep(0.02))  # once per engine step
    engine = Engine(model, tok, max_batch=1)
    with LiveServer(create_app(engine, tok, name)) as url:
        yield SimpleNamespace(url=url, engine=engine, name=name)


def the_running_request(engine: Engine, timeout: float = 10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if engine.slots[0] is not None:
            return engine.slots[0]
        time.sleep(0.005)
    raise AssertionError("no request started")


def test_a_client_that_leaves_mid_stream_frees_its_slot(slow):
    body = {"messages": MESSAGES, "max_tokens": 200, "stream": True, "temperature": 0}
    with httpx.stream("POST", slow.url + "v1/chat/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")  # the role chunk
        running = the_running_request(slow.engine)
        for line in lines:
            if '"content"' in line:
                break  # one token in; leave
    assert running.result(timeout=5).finish_reason == "cancelled" and len(running.token_ids) < 100
    t0 = time.perf_counter()
    r2 = client(slow.url).chat.completions.create(model=slow.name, messages=MESSAGES, max_tokens=3)
    assert r2.usage.completion_tokens == 3 and time.perf_counter() - t0 < 3
    assert slow.engine.slots == [None]


def test_a_client_that_leaves_while_waiting_for_a_plain_answer_frees_its_slot(slow):
    body = {"messages": MESSAGES, "max_tokens": 200, "temperature": 0}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(slow.url + "v1/chat/completions", json=body, timeout=httpx.Timeout(60, read=0.5))
    running = the_running_request(slow.engine)
    assert running.result(timeout=5).finish_reason == "cancelled" and len(running.token_ids) < 150
    r2 = client(slow.url).chat.completions.create(model=slow.name, messages=MESSAGES, max_tokens=3)
    assert r2.usage.completion_tokens == 3


# ------------------------------------------------------------------------------------------------------ the key
def test_the_api_key_is_required_on_v1_and_compared_exactly(served_run):
    model, tok, name = load_for_serving(served_run)
    with LiveServer(create_app(Engine(model, tok, max_batch=2), tok, name, api_key="s3cret-key")) as url:
        for key in ("wrong", "s3cret-", "s3cret-keyx", "S3CRET-KEY"):
            with pytest.raises(openai.AuthenticationError):
                client(url, key).chat.completions.create(model=name, messages=MESSAGES, max_tokens=2)
        with pytest.raises(openai.AuthenticationError):
            client(url, "wrong").models.list()
        for headers in ({}, {"Authorization": "s3cret-key"}, {"Authorization": "Bearer  s3cret-key"}):
            r = httpx.post(url + "v1/chat/completions", content=b"{not json", headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"  # before any parsing
        ok = client(url, "s3cret-key").chat.completions.create(model=name, messages=MESSAGES, max_tokens=2)
        assert ok.usage.completion_tokens == 2
        assert httpx.get(url + "health").status_code == 200 and httpx.get(url).status_code == 200  # open


# ----------------------------------------------------------------------------------------- the real command
def test_kamado_serve_binds_loopback_prints_its_url_and_reads_the_key_from_the_environment(served_run):
    code = (
        "import argparse, sys; from kamado.serve.commands import add_serving_parsers; "
        "p = argparse.ArgumentParser(); add_serving_parsers(p.add_subparsers()); "
        "a = p.parse_args(sys.argv[1:]); a.fn(a, [])"
    )
    env = {**os.environ, "KAMADO_API_KEY": "from-env"}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "serve", str(served_run), "--port", "0", "--max-batch", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        url = line.split(" at ", 1)[1].split()[0]
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0/"), line
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "health").json()["status"] == "ok":
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.1)
        assert httpx.get(url + "v1/models").status_code == 401
        assert client(url, "from-env").models.list().data[0].id == served_run.name
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, proc.stderr.read()  # type: ignore[union-attr]
    finally:
        proc.kill()
        proc.wait()


def test_a_taken_port_is_one_line_before_the_model_loads(served_run):
    from kamado.errors import ConfigError
    from kamado.serve.commands import bind_socket

    taken = bind_socket("127.0.0.1", 0)
    try:
        with pytest.raises(ConfigError, match="already in use"):
            bind_socket("127.0.0.1", taken.getsockname()[1])
    finally:
        taken.close()


def test_concurrent_requests_share_the_batch(live):
    """Four requests at once run in one decode batch: the engine takes far fewer steps than one at a time."""
    before = live.engine.steps
    results: list = []

    def ask() -> None:
        r = client(live.url).completions.create(model=live.name, prompt="猫", max_tokens=40, temperature=0)
        results.append(r.usage.completion_tokens)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [40] * 4
    assert live.engine.steps - before < 3 * 40  # one at a time would take >= 4 x 40
