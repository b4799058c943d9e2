"""The OpenAI wire format `kamado serve` speaks: request bodies as strict pydantic models, responses as plain dicts.

Requests follow OpenAI's chat completions and (legacy) completions APIs, field by field, with `top_k` as the one
extension (vLLM has the same). Models are strict and closed: a field this server does not know or does not
implement (`logit_bias`, `tools`, `echo`, ...) and a value of the wrong JSON type (`"max_tokens": "5"`, `"n": true`)
are errors that name the field, never silently ignored, so a client never believes it got behaviour it did not.
Errors have OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, which the `openai` client raises as
`BadRequestError`, `AuthenticationError`, ... with the message intact.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SEED_LIMIT = 2**63 - 128  # torch seeds are int64; request i of `n` uses seed + i


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Strict):
    include_usage: bool = False


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]  # "developer" is OpenAI's newer name for "system"
    content: str | list[TextPart]
    name: str | None = None  # accepted and ignored, as the chat template has no place for it

    def as_template_message(self) -> dict[str, str]:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class SamplingFields(_Strict):
    model: str | None = None  # None = the served model
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)  # None = 1, as in OpenAI's API
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)  # extension: 0 = off
    n: int = Field(1, ge=1, le=16)
    seed: int | None = Field(None, ge=0, le=SEED_LIMIT)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # accepted and ignored
    frequency_penalty: float = 0.0  # only the neutral value: some clients always send these
    presence_penalty: float = 0.0

    @model_validator(mode="after")
    def _consistent(self) -> SamplingFields:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options: only allowed when stream is true")
        if any(not s for s in self.stop_strings()):
            raise ValueError("stop: a stop string must have at least one character")
        if len(self.stop_strings()) > 4:
            raise ValueError("stop: at most 4 stop strings")
        if self.frequency_penalty or self.presence_penalty:
            raise ValueError("frequency_penalty / presence_penalty: not supported (only 0)")
        return self

    def stop_strings(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    def token_limit(self) -> int | None:
        return self.max_tokens

    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)  # OpenAI's newer name for max_tokens

    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)  # OpenAI's default for completions

    @model_validator(mode="after")
    def _some_prompt(self) -> CompletionRequest:
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt: an empty list; give a string, a list of strings or token ids")
        return self

    def prompts(self) -> list[str | list[int]]:
        """The batch of prompts: one string, strings, one list of token ids, or lists of token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if all(isinstance(x, int) for x in p):
            return [list(p)]  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------------ errors
def error_body(
    message: str, type: str = "invalid_request_error", param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


_UNION_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _path(loc: Sequence[int | str]) -> str:
    """('body', 'messages', 0, 'role') -> 'messages[0].role'; pydantic's union-member tags ('list[int]') dropped."""
    out = ""
    for x in loc[1:] if loc and loc[0] == "body" else loc:
        if isinstance(x, int):
            out += f"[{x}]"
        elif x not in _UNION_TAGS and "[" not in x and "-" not in x:
            out += f".{x}" if out else x
    return out


def validation_error_body(errors: Sequence[Any]) -> dict[str, Any]:
    """FastAPI's RequestValidationError list as one OpenAI error naming the first bad field."""
    if not errors:
        return error_body("invalid request")
    first = errors[0]
    if first.get("type") == "json_invalid":
        why = (first.get("ctx") or {}).get("error", "")
        return error_body(f"We could not parse the JSON body of your request ({why}).", code="invalid_json")
    param = _path(first.get("loc", ()))
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    if first.get("type") == "extra_forbidden":
        msg = "unknown or unsupported field"
    elif first.get("type") == "missing":
        msg = "required field is missing"
    text = msg if not param or msg.startswith(f"{param}:") else f"{param}: {msg}"
    return error_body(text, param=param or None)


# --------------------------------------------------------------------------------------------------- responses
def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def response(chat: bool, rid: str, model: str, texts: Sequence[str], reasons: Sequence[str], use: dict[str, int]):
    """A whole `chat.completion` or `text_completion`: one choice per text."""
    choices = [
        {"index": i, "finish_reason": r, "logprobs": None}
        | ({"message": {"role": "assistant", "content": t}} if chat else {"text": t})
        for i, (t, r) in enumerate(zip(texts, reasons, strict=True))
    ]
    kind = "chat.completion" if chat else "text_completion"
    out = {"id": rid, "object": kind, "created": int(time.time()), "model": model, "choices": choices}
    return out | {"usage": use, "system_fingerprint": None}


def chunk(chat: bool, rid: str, model: str, created: int, choices: list[Any], use: Any = ...) -> dict[str, Any]:
    """One streamed event's JSON; `use` given (None, or the counts at the end) when the client asked for usage."""
    kind = "chat.completion.chunk" if chat else "text_completion"
    out = {"id": rid, "object": kind, "created": created, "model": model, "choices": choices}
    return out if use is ... else out | {"usage": use}


def stream_choice(chat: bool, i: int, text: str | None, reason: str | None = None) -> dict[str, Any]:
    """Choice i of a chunk: new text, or (text None) the end of a chat choice, whose delta is empty."""
    if chat:
        delta = {} if text is None else {"content": text}
        return {"index": i, "delta": delta, "finish_reason": reason, "logprobs": None}
    return {"index": i, "text": text or "", "finish_reason": reason, "logprobs": None}


def role_choice(i: int) -> dict[str, Any]:
    """The chunk that opens choice i of a streamed chat answer, as OpenAI sends it."""
    return {"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None, "logprobs": None}
