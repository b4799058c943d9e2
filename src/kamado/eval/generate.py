"""Where evaluation answers come from: a kamado model through the serving engine, or any OpenAI-compatible endpoint.

Both take the same `Prompt`s — chat messages (rendered by the model's chat template, or sent to
`/v1/chat/completions`) or a plain text (a base model's completion, or `/v1/completions`) — and return one
`Completion` per prompt, in order. Nothing is dropped: a prompt longer than the local model's context gets an
empty completion with finish_reason "too_long", an endpoint error after its retries an empty one with "error"
and the message; the benchmark counts both in its report.

- `EngineGenerator` batches every prompt through one `kamado.serve.engine.Engine` (continuous batching over KV
  slots, chunked prefill): the prompts are submitted together and the engine keeps `max_batch` of them decoding.
  The prefix all the prompts share (a task's preamble and instruction, few-shot examples) is computed once and
  copied into each slot (`Engine.cache_prefix`).
- `EndpointGenerator` sends requests from a few threads at once, retrying 429 and 5xx answers with backoff.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from kamado.errors import ConfigError
from kamado.model.transformer import Transformer
from kamado.serve.engine import Engine, GenParams
from kamado.tokenizer import Tokenizer

END_OF_TURN = "<|im_end|>"


@dataclass(frozen=True)
class Prompt:
    """One generation request: `messages` (chat) or `text` (plain completion), exactly one of them."""

    messages: tuple[Mapping[str, str], ...] | None = None
    text: str | None = None
    max_tokens: int = 256
    temperature: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    top_p: float = 1.0  # nucleus sampling: the smallest set of tokens holding this much probability

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.text is None):
            raise ValueError("a Prompt has either messages or text")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")

    @classmethod
    def chat(cls, messages: Sequence[Mapping[str, str]], **kw: Any) -> Prompt:
        return cls(messages=tuple(dict(m) for m in messages), **kw)


@dataclass(frozen=True)
class Completion:
    text: str
    finish_reason: str  # "stop" | "length" | "too_long" (local: no room in the context) | "error" (endpoint)
    error: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Generator(Protocol):
    name: str  # the model's name in reports and answer files

    def generate(self, prompts: Sequence[Prompt], desc: str = "generating") -> list[Completion]: ...


def _bar(desc: str, total: int, enabled: bool) -> Progress:
    return Progress(
        TextColumn(desc),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        disable=not enabled or total == 0,
        transient=True,
    )


@dataclass
class EngineGenerator:
    """A kamado model served in-process. `dtype` None uses the weights as they are (a policy being trained);
    a dtype makes a serving copy (bf16: the fast path on CPUs with oneDNN bf16 and on GPUs)."""

    model: Transformer
    tok: Tokenizer
    name: str = "kamado"
    dtype: torch.dtype | None = None
    max_batch: int = 32
    progress: bool = True
    _engine: Engine | None = field(default=None, repr=False)

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = Engine(self.model, self.tok, max_batch=self.max_batch, dtype=self.dtype)
        return self._engine

    def encode(self, p: Prompt) -> list[int]:
        return self.tok.encode_chat(p.messages) if p.messages is not None else self.tok.encode(p.text or "")

    def generate(self, prompts: Sequence[Prompt], desc: str = "generating") -> list[Completion]:
        engine, end = self.engine, (self.tok.token_id(END_OF_TURN),)
        out: list[Completion | None] = [None] * len(prompts)
        encoded = [self.encode(p) for p in prompts]
        fits = [ids for ids in encoded if 0 < len(ids) < engine.max_len]
        shared = common_prefix(fits) if len(fits) > 1 else 0
        prefix = engine.cache_prefix(fits[0][:shared]) if shared >= MIN_PREFIX else None
        running = []
        for i, (p, ids) in enumerate(zip(prompts, encoded, strict=True)):
            room = engine.max_len - len(ids)
            if not ids or room < 1:
                out[i] = Completion("", "too_long", prompt_tokens=len(ids))
                continue
            params = GenParams(
                max_tokens=min(p.max_tokens, room),
                temperature=p.temperature,
                top_p=p.top_p,
                seed=p.seed,
                stop=p.stop,
                stop_token_ids=end if p.messages is not None else (),
            )
            running.append((i, engine.submit(ids, params, prefix=prefix)))
        self.model.eval()
        with _bar(desc, len(running), self.progress) as bar, torch.no_grad():
            task = bar.add_task(desc, total=len(running))
            left = len(running)
            while left:
                engine.step()
                now = sum(not r.done for _, r in running)
                bar.advance(task, left - now)
                left = now
        for i, r in running:
            out[i] = Completion(r.text, r.finish_reason or "stop", "", len(r.prompt_ids), len(r.token_ids))
        return [c for c in out if c is not None]


MIN_PREFIX = 16  # a shared prompt prefix at least this long is computed once (`Engine.cache_prefix`)


def common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest prefix all sequences share."""
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for s in seqs[1:]:
        k = 0
        while k < n and s[k] == first[k]:
            k += 1
        n = k
    return n


class NotJSONReply(RuntimeError):
    """The endpoint answered, but not with JSON."""


def post_json(url: str, body: Mapping[str, Any], key: str = "", timeout: float = 120.0, retries: int = 3) -> Any:
    """POST `body` as JSON and return the decoded reply. 429 and 5xx answers and dropped connections are retried
    `retries` times with backoff (1, 2, 4 s...); anything else raises RuntimeError with the status and message."""
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    for attempt in range(retries + 1):
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=timeout) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", "replace")[:300]
            if (e.code == 429 or e.code >= 500) and attempt < retries:
                time.sleep(2**attempt)
                continue
            raise RuntimeError(f"{url}: HTTP {e.code} {detail}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
            if attempt < retries:
                time.sleep(2**attempt)
                continue
            raise RuntimeError(f"{url} cannot be reached ({getattr(e, 'reason', e)})") from None
        except json.JSONDecodeError:
            raise NotJSONReply(f"{url}: the reply is not JSON") from None
    raise AssertionError("unreachable")


@dataclass
class EndpointGenerator:
    """Any OpenAI-compatible server (`kamado serve`, vLLM, llama.cpp, an API): `base_url` ends before
    `/chat/completions` (e.g. http://host:8000/v1); the key is read from the environment variable `api_key_env`."""

    base_url: str
    name: str
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8
    timeout_s: float = 120.0
    retries: int = 3
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"endpoint {self.base_url!r}: give an http(s) URL such as http://localhost:8000/v1")
        if not self.name:
            raise ConfigError("an endpoint needs the model's name (--model)")
        self.key = os.environ.get(self.api_key_env, "")

    def one(self, p: Prompt) -> Completion:
        body: dict[str, Any] = {"model": self.name, "max_tokens": p.max_tokens, "temperature": p.temperature}
        if p.seed is not None:
            body["seed"] = p.seed
        if p.top_p < 1.0:
            body["top_p"] = p.top_p
        if p.stop:
            body["stop"] = list(p.stop)
        if p.messages is not None:
            url, body["messages"] = self.base_url.rstrip("/") + "/chat/completions", [dict(m) for m in p.messages]
        else:
            url, body["prompt"] = self.base_url.rstrip("/") + "/completions", p.text
        try:
            reply = post_json(url, body, self.key, self.timeout_s, self.retries)
            choice = reply["choices"][0]
            text = choice["message"]["content"] if p.messages is not None else choice["text"]
            usage = reply.get("usage") or {}
            return Completion(
                str(text or ""),
                str(choice.get("finish_reason") or "stop"),
                "",
                int(usage.get("prompt_tokens", 0)),
                int(usage.get("completion_tokens", 0)),
            )
        except RuntimeError as e:
            return Completion("", "error", str(e))
        except (KeyError, IndexError, TypeError, ValueError) as e:
            return Completion("", "error", f"{url}: not an OpenAI completion reply ({e!r})")

    def generate(self, prompts: Sequence[Prompt], desc: str = "generating") -> list[Completion]:
        """Completions in order. The first prompt goes alone: an endpoint that cannot be reached at all stops the
        run with a ConfigError, instead of every prompt failing after its retries."""
        if not prompts:
            return []
        first = self.one(prompts[0])
        if first.finish_reason == "error" and "cannot be reached" in first.error:
            raise ConfigError(f"endpoint: {first.error}")
        out = [first]
        with (
            _bar(desc, len(prompts), self.progress) as bar,
            ThreadPoolExecutor(max(1, self.concurrency)) as pool,
        ):
            task = bar.add_task(desc, total=len(prompts), completed=1)
            for c in pool.map(self.one, prompts[1:]):
                out.append(c)
                bar.advance(task)
        return out
