"""Judge requests through the cache: each reply is looked up first, and a new one is stored the moment it arrives
(a run killed half-way keeps what it paid for).

The judge is any OpenAI-compatible chat endpoint (`EndpointGenerator`: retries 429/5xx with backoff). Messages are
FastChat's: the prompt's system message (when it has one) and the filled-in template as the user turn, temperature
0, up to 2048 new tokens (FastChat's judge settings).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from kamado.errors import ConfigError
from kamado.eval.generate import Completion, EndpointGenerator, Prompt, _bar
from kamado.eval.judge.cache import JudgmentCache, judgment_key
from kamado.eval.judge.verdicts import ERROR_OUTPUT

__all__ = ["ERROR_OUTPUT", "JUDGE_MAX_TOKENS", "JudgeCall", "Reply", "ask_judge", "judge_call"]
JUDGE_MAX_TOKENS = 2048


@dataclass(frozen=True)
class JudgeCall:
    key: str
    prompt: Prompt


@dataclass(frozen=True)
class Reply:
    text: str  # the judge's reply, or ERROR_OUTPUT
    error: str = ""  # why the call failed ("" when it did not)
    cached: bool = False


def judge_call(
    question: Sequence[str],
    answer: Sequence[str],
    judge_model: str,
    system: str,
    user: str,
    max_tokens: int = JUDGE_MAX_TOKENS,
) -> JudgeCall:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    key = judgment_key(question, answer, judge_model, [system, user])
    return JudgeCall(key, Prompt.chat(messages, max_tokens=max_tokens, temperature=0.0))


def ask_judge(
    judge: EndpointGenerator, cache: JudgmentCache, calls: Sequence[JudgeCall], desc: str = "judging"
) -> list[Reply]:
    """Replies in order: cached ones without a request, the others from the endpoint (stored as they come)."""
    out: list[Reply | None] = [None] * len(calls)
    todo: list[int] = []
    for i, c in enumerate(calls):
        hit = cache.get(c.key)
        if hit is not None:
            out[i] = Reply(hit, cached=True)
        else:
            todo.append(i)

    def one(i: int) -> Reply:
        c: Completion = judge.one(calls[i].prompt)
        if c.finish_reason == "error":
            return Reply(ERROR_OUTPUT, c.error or "the judge call failed")
        cache.put(calls[i].key, judge.name, c.text)
        return Reply(c.text)

    if todo:  # the first alone: a judge that cannot be reached stops the run instead of failing every call
        first = one(todo[0])
        if "cannot be reached" in first.error:
            raise ConfigError(f"judge endpoint: {first.error}")
        out[todo[0]] = first
        with (
            _bar(desc, len(todo), judge.progress) as bar,
            ThreadPoolExecutor(max(1, judge.concurrency)) as pool,
        ):
            task = bar.add_task(desc, total=len(todo), completed=1)
            for i, reply in zip(todo[1:], pool.map(one, todo[1:]), strict=True):
                out[i] = reply
                bar.advance(task)
    return [r for r in out if r is not None]
