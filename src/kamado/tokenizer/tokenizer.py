"""Thin wrapper around a trained `tokenizers.Tokenizer` with the ids the rest of kamado needs.

`encode` treats its input as ordinary text: a document that happens to contain the string "<|endoftext|>" is
encoded byte by byte, never as the separator id, so scraped data cannot forge document or chat boundaries.
Pass `allow_special=True` for trusted markup (chat templates, prompts) where the special strings are meant.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer

from kamado.errors import DataError
from kamado.tokenizer.train import EOS, PAD


class Tokenizer:
    """Encode/decode text; `eos_id` separates documents, `pad_id` fills batches."""

    def __init__(self, tok: HFTokenizer) -> None:
        # Two copies of the same pipeline: one reads special strings as plain text, one as special tokens.
        self._plain = HFTokenizer.from_str(tok.to_str())
        self._plain.encode_special_tokens = True
        self._special = HFTokenizer.from_str(tok.to_str())
        self._special.encode_special_tokens = False
        self.eos_id = self.token_id(EOS)
        self.pad_id = self.token_id(PAD)

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
        return cls(tok)

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

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        return str(self._plain.decode(list(ids), skip_special_tokens=skip_special))

    def chars_per_token(self, texts: Iterable[str]) -> float:
        """Compression: total characters / total tokens over `texts` (higher means fewer, longer tokens)."""
        batch = list(texts)
        n_tokens = sum(len(ids) for ids in self.encode_batch(batch))
        if n_tokens == 0:
            raise DataError("chars_per_token: no text given")
        return sum(len(t) for t in batch) / n_tokens
