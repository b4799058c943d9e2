"""Inference engine: continuous batching over KV-cache slots, chunked prefill, per-request sampling, streaming.

Each running request owns one slot of a preallocated cache (`SlotCache`: position j of a sequence at index j).
One engine step prefills at most `prefill_chunk` prompt tokens (a chunk of the oldest waiting prompt, then of the
next ones while the budget lasts, so a long prompt never stalls the others for long), then decodes one token for
every running request in a single batch whose rows sit at different positions (the model takes a start position
per row). A request that finishes frees its slot at
once and the next waiting request takes it, without waiting for the rest of the batch. New requests go to the
lowest free slot, so a decode batch is the contiguous range of slots 0..highest busy one: the cache is then read
as a view, never gathered.

Every request has its own sampling parameters and its own random generator (a seeded request gives the same
tokens whatever else is in the batch), stop token ids and stop strings. Text is streamed as `Delta`s; a piece
is held back while it could still be the start of a stop string, or is an incomplete UTF-8 character.

Speed (bench/decode_throughput.py, LOG.md): decoding reads every weight once per step, so `dtype=torch.bfloat16`
halves the bytes, and on a CPU the engine's bf16 copy of the model has its Linear layers packed for oneDNN
(`serve.weights`: 2.5x aten's bandwidth for one row). Decode steps run `slots.decode_step`, the model's forward
for one token per row with fewer small operations; greedy rows are picked by one argmax over the batch, sampled
rows each draw from their own generator; a prompt's last chunk computes logits for its last position only.

Use it synchronously (`Engine.generate(prompts, params)`, e.g. for evaluation or on-policy sampling) or start the
background loop (`Engine.start()`) and `submit` from any thread or from asyncio (`Request.astream`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from kamado.config import SAMPLING_RANGES
from kamado.config_checks import Range, check_fields
from kamado.model.generate import SamplingParams, sample_next
from kamado.model.transformer import Transformer
from kamado.serve.slots import SlotCache, decode_step, run_with_cache, skips_hooks
from kamado.serve.weights import serving_copy
from kamado.tokenizer import Tokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenParams:
    """One request's sampling: max_tokens None = up to the end of the context; temperature 0 = greedy."""

    max_tokens: int | None = None
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()  # stop strings: the text ends before the first one
    stop_token_ids: tuple[int, ...] = ()  # besides the tokenizer's end of text

    def __post_init__(self) -> None:
        ranges = {k: v for k, v in SAMPLING_RANGES.items() if k != "max_new_tokens"}
        check_fields(self, "", max_tokens=Range(1, optional=True), **ranges)

    def sampling(self) -> SamplingParams:
        return SamplingParams(1, self.temperature, self.top_k, self.top_p, self.stop_token_ids, self.seed)


@dataclass(frozen=True)
class Prefix:
    """Keys and values of a prompt prefix computed once (`Engine.cache_prefix`), for requests that start with it:
    they copy it into their slot instead of prefilling it again ([layers, H_kv, len(ids), D] each)."""

    ids: tuple[int, ...]
    k: torch.Tensor
    v: torch.Tensor


@dataclass
class Delta:
    """A piece of streamed output: new text (may be empty), the new token ids, and why it ended, once it has."""

    text: str
    token_ids: list[int]
    finish_reason: str | None = None  # "stop" | "length" | "cancelled" | "error"


_ids = itertools.count()


@dataclass(eq=False)
class Request:
    """A submitted request; read its output with `stream()` / `astream()` or wait with `result()`."""

    prompt_ids: list[int]
    params: GenParams
    id: int = field(default_factory=lambda: next(_ids))
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    submitted_at: float = field(default_factory=time.perf_counter)  # time.perf_counter() seconds, for latencies
    first_token_at: float | None = None  # when the first new token was emitted (time to first token)
    _loop: asyncio.AbstractEventLoop | None = None
    _aq: asyncio.Queue[Delta] | None = None
    _q: queue.Queue[Delta] = field(default_factory=queue.Queue)
    _done: threading.Event = field(default_factory=threading.Event)
    _cancel: bool = False
    # engine-side state
    _cursor: int = 0  # prompt tokens prefilled so far
    _slot: int = -1
    _gen: torch.Generator | None = None
    _fixed: int = 0  # new tokens whose text can no longer change (they end on a whole character) ...
    _fixed_text: str = ""  # ... and that text
    _stop_ids: frozenset[int] = frozenset()
    _prefix: Prefix | None = None  # copied into the slot when the request gets one

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def cancel(self) -> None:
        """Stop generating (e.g. the client went away); the slot is freed at the next step."""
        self._cancel = True

    def stream(self) -> Iterator[Delta]:
        while True:
            d = self._q.get()
            yield d
            if d.finish_reason is not None:
                return

    async def astream(self) -> AsyncIterator[Delta]:
        assert self._aq is not None, "submit(..., loop=asyncio.get_running_loop()) to stream into asyncio"
        while True:
            d = await self._aq.get()
            yield d
            if d.finish_reason is not None:
                return

    def result(self, timeout: float | None = None) -> Request:
        if not self._done.wait(timeout):
            raise TimeoutError(f"request {self.id} not finished after {timeout} s")
        return self

    def _emit(self, d: Delta) -> None:
        if d.token_ids and self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.text += d.text
        self.token_ids += d.token_ids
        if d.finish_reason is not None:
            self.finish_reason = d.finish_reason
        self._q.put(d)
        if self._loop is not None and self._aq is not None:
            with contextlib.suppress(RuntimeError):  # a closed event loop: nobody is listening any more
                self._loop.call_soon_threadsafe(self._aq.put_nowait, d)
        if d.finish_reason is not None:
            self._done.set()


class Engine:
    """Serve `model`: `dtype` None serves it as it is (its live weights: e.g. a policy being trained); a dtype
    serves a snapshot copy in that dtype (bf16: ~3x faster decoding on a CPU; greedy tokens follow float32's until
    two candidates are within bf16 rounding of each other: logits differ by up to ~2% of their largest value)."""

    def __init__(
        self,
        model: Transformer,
        tokenizer: Tokenizer,
        *,
        max_batch: int = 8,
        prefill_chunk: int = 256,
        max_len: int | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.model = serving_copy(model, dtype)
        self.tok = tokenizer
        self.max_len = min(max_len or model.cfg.max_seq_len, model.cfg.max_seq_len)
        self.prefill_chunk = max(1, prefill_chunk)
        self.device = self.model.embed.weight.device
        self.cache = SlotCache(self.model, max_batch, self.max_len)
        self.slots: list[Request | None] = [None] * max_batch
        self.waiting: deque[Request] = deque()
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self.steps = 0

    # ------------------------------------------------------------------------------------------------ requests
    def check(self, prompt_ids: Sequence[int], params: GenParams) -> None:
        """ValueError naming the problem when a request cannot run (checked before it is queued)."""
        if not prompt_ids:
            raise ValueError("the prompt is empty: give at least one token")
        if len(prompt_ids) >= self.max_len:
            raise ValueError(f"the prompt has {len(prompt_ids)} tokens; the context holds {self.max_len}")
        if params.max_tokens is not None and len(prompt_ids) + params.max_tokens > self.max_len:
            raise ValueError(
                f"max_tokens={params.max_tokens} + {len(prompt_ids)} prompt tokens is past the context "
                f"of {self.max_len} tokens (at most {self.max_len - len(prompt_ids)} here)"
            )
        if any(not 0 <= i < self.model.cfg.vocab_size for i in prompt_ids):
            raise ValueError(f"a prompt token id is outside the vocabulary of {self.model.cfg.vocab_size}")

    def cache_prefix(self, ids: Sequence[int]) -> Prefix:
        """Compute the keys and values of `ids` once. Requests submitted with `prefix=` that start with these ids
        copy them into their slot and prefill only the rest: evaluation prompts of one task share a long
        instruction (jaster: ~60% of all prompt tokens), so this skips most of the prefill work."""
        if not ids or len(ids) >= self.max_len:
            raise ValueError(f"a prefix needs 1 to {self.max_len - 1} tokens, got {len(ids)}")
        scratch = SlotCache(self.model, 1, len(ids), dtype=self.cache.dtype)
        x = torch.tensor([list(ids)], device=self.device)
        with torch.inference_mode():
            scratch.forward(self.model, x, 0, 1, torch.tensor([0]), last_only=True)
        n = len(ids)
        return Prefix(tuple(ids), scratch.k[:, 0, :, :n].clone(), scratch.v[:, 0, :, :n].clone())

    def submit(
        self,
        prompt_ids: Sequence[int],
        params: GenParams,
        loop: asyncio.AbstractEventLoop | None = None,
        prefix: Prefix | None = None,
    ) -> Request:
        self.check(prompt_ids, params)
        if prefix is not None and tuple(prompt_ids[: len(prefix.ids)]) != prefix.ids:
            raise ValueError("the prompt does not start with the given prefix")
        r = Request(list(prompt_ids), params, _loop=loop, _aq=asyncio.Queue() if loop is not None else None)
        r._prefix = prefix
        if params.seed is not None:
            r._gen = torch.Generator(self.device).manual_seed(params.seed)
        r._stop_ids = frozenset(params.stop_token_ids) | {self.tok.eos_id}
        with self._lock:
            self.waiting.append(r)
            self._lock.notify()
        return r

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        params: GenParams | Sequence[GenParams],
        prefix: Prefix | None = None,
    ) -> list[Request]:
        """Run many requests to the end (in this thread unless the background loop runs) and return them."""
        ps = [params] * len(prompts) if isinstance(params, GenParams) else list(params)
        reqs = [self.submit(p, q, prefix=prefix) for p, q in zip(prompts, ps, strict=True)]
        if self._thread is None:
            while not all(r.done for r in reqs):
                self.step()
        return [r.result() for r in reqs]

    # --------------------------------------------------------------------------------------------- background
    def start(self) -> Engine:
        if self._thread is None:
            self._stopping = False
            self._thread = threading.Thread(target=self._run, name="kamado-engine", daemon=True)
            self._thread.start()
        return self

    @property
    def running(self) -> bool:
        """The background loop is alive (`start()` was called and it has not stopped)."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        """Stop the background loop; requests still running or waiting end as "cancelled" (nobody waits forever)."""
        with self._lock:
            self._stopping = True
            self._lock.notify()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        for s, r in enumerate(self.slots):
            if r is not None:
                self._finish(s, r, "cancelled")
        with self._lock:
            left, self.waiting = list(self.waiting), deque()
        for r in left:
            r._emit(Delta("", [], "cancelled"))

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._stopping and not self.waiting and not any(self.slots):
                    self._lock.wait()
                if self._stopping:
                    return
            try:
                self.step()
            except Exception as e:  # never die: fail what was running, keep serving the rest
                log.exception("engine step failed")
                for s, r in enumerate(self.slots):
                    if r is not None:
                        log.error("request %d failed: %s", r.id, e)
                        self._finish(s, r, "error")

    # ------------------------------------------------------------------------------------------------ a step
    @torch.inference_mode()
    def step(self) -> None:
        """Admit waiting requests to free slots, prefill up to `prefill_chunk` prompt tokens, decode one token for
        every running request."""
        self.steps += 1
        with self._lock:
            for s in range(len(self.slots)):
                if self.slots[s] is None and self.waiting:
                    new = self.waiting.popleft()
                    new._slot, self.slots[s] = s, new
                    if new._prefix is not None:
                        self._restore(s, new)
        for s, busy in enumerate(self.slots):
            if busy is not None and busy._cancel:
                self._finish(s, busy, "cancelled")
        prefilling = [r for r in self.slots if r is not None and r._cursor < len(r.prompt_ids)]
        budget = self.prefill_chunk
        # oldest first, each prompt its own forward (rows of one batch would need equal chunk lengths), while the
        # budget lasts: with many short prompts waiting, a step decodes after several of them, not after each
        for r in sorted(prefilling, key=lambda r: r.id):
            if budget == 0:
                break
            budget -= self._prefill(r, budget)
        decoding = [s for s, r in enumerate(self.slots) if r is not None and r.token_ids]
        if decoding:
            self._decode(decoding)

    def _restore(self, s: int, r: Request) -> None:
        """Copy r's prefix into slot s and start its prefill after it (at its last token when the prompt is the
        prefix itself: the first new token needs that position's logits)."""
        assert r._prefix is not None
        n = min(len(r._prefix.ids), len(r.prompt_ids) - 1)
        if n > 0:
            self.cache.views(s, s + 1, n)  # grows the width to hold n positions if it does not
            self.cache.k[:, s, :, :n] = r._prefix.k[:, :, :n]
            self.cache.v[:, s, :, :n] = r._prefix.v[:, :, :n]
        r._cursor = n

    def _prefill(self, r: Request, budget: int) -> int:
        """Run the next chunk (at most `budget` tokens) of r's prompt; return its length."""
        chunk = r.prompt_ids[r._cursor : r._cursor + budget]
        x = torch.tensor([chunk], device=self.device)
        logits = self.cache.forward(self.model, x, r._slot, r._slot + 1, torch.tensor([r._cursor]), last_only=True)
        r._cursor += len(chunk)
        if r._cursor == len(r.prompt_ids):  # the prompt is in: its last logits give the first new token
            self._accept(r._slot, r, int(sample_next(logits[:, -1].float(), r.params.sampling(), r._gen)[0]))
        return len(chunk)

    def _decode(self, slots: list[int]) -> None:
        hi = max(slots) + 1
        tokens, where = [0] * hi, [0] * hi
        # rows in the range that are not decoding write one throwaway entry at their own current length, which
        # their next real token overwrites before anything reads it
        for s, r in enumerate(self.slots[:hi]):
            if r is not None:
                where[s] = r._cursor
        for s in slots:
            r = self.slots[s]
            assert r is not None
            tokens[s], where[s] = r.token_ids[-1], len(r.prompt_ids) + len(r.token_ids) - 1
        x = torch.tensor(tokens, device=self.device)
        pos = torch.tensor(where, device=self.device)
        live = (len(r.prompt_ids) + len(r.token_ids) for r in self.slots if r is not None)
        self.cache.fit(max(max(live), max(where) + 1))  # the furthest position any slot holds or writes now
        k, v = self.cache.views(0, hi, max(where) + 1)
        if skips_hooks(self.model):  # e.g. a test's slowed-down layer: the model's own forward runs its hooks
            logits = run_with_cache(self.model, x[:, None], pos, k, v, True)[:, -1].float()
        else:
            logits = decode_step(self.model, x, pos, k, v).float()  # (argmax on bf16 is 5x slower on a CPU)
        # one read of the device for all greedy rows; sampled rows each draw from their own generator
        picked = logits.argmax(-1).tolist()
        for s in slots:
            r = self.slots[s]
            assert r is not None
            if r.params.temperature != 0:
                picked[s] = int(sample_next(logits[s : s + 1], r.params.sampling(), r._gen)[0])
            self._accept(s, r, picked[s])

    def _accept(self, s: int, r: Request, token: int) -> None:
        """Take one sampled token: stop on a stop id, a stop string or the length limit, else stream its text."""
        if token in r._stop_ids:  # the text so far is final, held-back tail included; the stop token is not text
            return self._finish(s, r, "stop", token, r._fixed_text + self._decode_text(r.token_ids[r._fixed :]))
        n = len(r.token_ids) + 1
        # decode only the tokens after the last whole character: byte-level BPE text up to a character boundary
        # never changes, and decoding everything every step would cost O(length) per token
        tail = self._decode_text([*r.token_ids[r._fixed :], token])
        text = r._fixed_text + tail
        if not tail.endswith("\ufffd"):  # an incomplete UTF-8 character decodes as U+FFFD until it completes
            r._fixed, r._fixed_text = n, text
        cut = min(
            (i for i in (text.find(x, max(0, len(r.text) - len(x))) for x in r.params.stop) if i >= 0), default=-1
        )
        if cut >= 0:
            return self._finish(s, r, "stop", token, text[:cut])
        limit = r.params.max_tokens or self.max_len
        if n >= limit or len(r.prompt_ids) + n >= self.max_len:
            return self._finish(s, r, "length", token, text)
        safe = len(text.rstrip("\ufffd"))
        for stop in r.params.stop:  # hold back a tail that could still become a stop string
            for k in range(min(len(stop) - 1, safe), 0, -1):
                if text.endswith(stop[:k], 0, safe):
                    safe -= k
                    break
        r._emit(Delta(text[len(r.text) : max(safe, len(r.text))], [token]))

    def _decode_text(self, ids: list[int]) -> str:
        """Text of generated ids; special tokens (chat markup a model may emit) are not text, as in OpenAI's API."""
        return self.tok.decode(ids, skip_special=True)

    def _finish(self, s: int, r: Request, reason: str, token: int | None = None, text: str | None = None) -> None:
        final = r.text if text is None else text
        with self._lock:  # free the slot first: whoever sees the request done then sees its slot free too
            self.slots[s] = None
        r._emit(Delta(final[len(r.text) :], [] if token is None else [token], reason))
