"""The chat template, rendered the way `transformers` renders it, by one function for training, generation and export.

The template is the Jinja string the tokenizer folder carries (`tokenizer_config.json`, written by
`kamado.tokenizer.train.save_tokenizer`); an exported Hugging Face folder carries the same string, so
`AutoTokenizer.apply_chat_template` and `render_chat` give the same text. Rendering runs in Jinja's sandbox, as
transformers does, because a template is data that may come from someone else's folder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from kamado.errors import DataError

ROLES = ("system", "user", "assistant")


def _raise(message: str) -> None:
    raise DataError(message)


@lru_cache(maxsize=8)
def _compile(template: str) -> Any:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    return env.from_string(template)


def render_chat(template: str, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True) -> str:
    """Text of a conversation: each message {"role", "content"}, then (optionally) the assistant's turn opening."""
    for i, m in enumerate(messages):
        if m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise DataError(f"message {i}: needs a role in {ROLES} and a string content, got {dict(m)!r:.80}")
    try:
        return str(_compile(template).render(messages=list(messages), add_generation_prompt=add_generation_prompt))
    except TemplateError as e:
        raise DataError(f"chat template: {e}") from None
