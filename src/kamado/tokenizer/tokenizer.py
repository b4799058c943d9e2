"""Thin wrapper around a trained `tokenizers.Tokenizer` with the ids the rest of kamado needs.

`encode` treats its input as ordinary text: a document that happens to contain the string "<|endoftext|>" is
encoded byte by byte, never as the separator id, so scraped data cannot forge document or chat boundaries.
Pass `allow_special=True` for trusted markup (chat templates, prompts) where the special strings are meant.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

from kamado.errors import DataError
from kamado.tokenizer.chat import render_chat
from kamado.tokenizer.train import CHAT_TEMPLATE, EOS, PAD


class Tokenizer:
    """Encode/decode text; `eos_id` separates documents, `pad_id` fills batches."""

    def __init__(self, tok: HFTokenizer, chat_template: str = CHAT_TEMPLATE) -> None:
        # Two copies of the same pipeline: one reads special strings as plain text, one as special tokens.
        self._plain = HFTokenizer.from_str(tok.to_str())
        self._plain.encode_special_tokens = True
        self._special = HFTokenizer.from_str(tok.to_str())
        self._special.encode_special_tokens = False
        self.eos_id = self.token_id(EOS)
        self.pad_id = self.token_id(PAD)
        self.chat_template = chat_template

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Load from a tokenizer folder (holding tokenizer.json) or a tokenizer.json file."""
        p = Path(path)
        file = p / "tokenizer.json" if p.is_dir() else p
        if not file.is_file():
            raise DataError(f"{file}: tokenizer not found (train one with `kamado tokenizer train`)")
        try:
            tok = HFTokenizer.from_file(str(file))
        except Exception as e:  # the Rust side raises plain Exception on malformed JSON
            raise DataError(f"{file}: not a valid tokenizer.json ({e})") from None
        config = file.parent / "tokenizer_config.json"
        template = CHAT_TEMPLATE
        if config.is_file():
            try:
                template = json.loads(config.read_text(encoding="utf-8")).get("chat_template") or CHAT_TEMPLATE
            except (ValueError, AttributeError) as e:
                raise DataError(f"{config}: not a valid tokenizer_config.json ({e})") from None
        return cls(tok, template)

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (the model's embedding rows must cover it)."""
        return int(self._plain.get_vocab_size(with_added_tokens=True))

    def token_id(self, token: str) -> int:
        """Id of one vocabulary entry (e.g. "<|im_start|>"); unknown entries raise DataError."""
        i = self._plain.token_to_id(token)
        if i is None:
            raise DataError(f"token {token!r} is not in the tokenizer vocabulary")
        return int(i)

    def _pick(self, allow_special: bool) -> HFTokenizer:
        return self._special if allow_special else self._plain

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        return list(self._pick(allow_special).encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: Sequence[str], allow_special: bool = False) -> list[list[int]]:
        """Encode many texts at once; the Rust side spreads the work over threads."""
        encs = self._pick(allow_special).encode_batch(list(texts), add_special_tokens=False)
        return [list(e.ids) for e in encs]

    def render_chat(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True) -> str:
        """The conversation as text through the tokenizer's chat template (`kamado.tokenizer.chat`)."""
        return render_chat(self.chat_template, messages, add_generation_prompt)

    def encode_chat(self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of a rendered conversation; the markup's special strings are special tokens, and the
        messages' own text is encoded as plain text, so a user cannot forge a turn by typing "<|im_end|>"."""
        contents = [m["content"] for m in messages]
        # The markup is found by rendering with placeholders no markup contains: searching for the contents
        # themselves would find a short answer such as "n" inside the markup ("<|im_end|>") instead.
        marks = [f"\ue000{i}\ue001" for i in range(len(messages))]
        marked = self.render_chat(
            [{**m, "content": k} for m, k in zip(messages, marks, strict=True)], add_generation_prompt
        )
        pieces = _split_markup(marked, marks)
        pieces[1::2] = contents
        if "".join(pieces) != self.render_chat(messages, add_generation_prompt):
            raise DataError("chat template does not write the messages verbatim; cannot tell markup from text")
        ids: list[int] = []
        for i, piece in enumerate(pieces):
            ids += self.encode(piece, allow_special=i % 2 == 0)
        return ids

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        return str(self._plain.decode(list(ids), skip_special_tokens=skip_special))

    def chars_per_token(self, texts: Iterable[str]) -> float:
        """Compression: total characters / total tokens over `texts` (higher means fewer, longer tokens)."""
        batch = list(texts)
        n_tokens = sum(len(ids) for ids in self.encode_batch(batch))
        if n_tokens == 0:
            raise DataError("chars_per_token: no text given")
        return sum(len(t) for t in batch) / n_tokens


def _split_markup(text: str, contents: Sequence[str]) -> list[str]:
    """Cut rendered chat text into [markup, content, markup, content, ..., markup], finding each message's
    content in order (the template writes them in order and verbatim)."""
    pieces, at = [], 0
    for c in contents:
        j = text.find(c, at) if c else at
        if j < 0:
            raise DataError("chat template does not write the messages verbatim; cannot tell markup from text")
        pieces += [text[at:j], c]
        at = j + len(c)
    return [*pieces, text[at:]]
