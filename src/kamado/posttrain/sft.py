"""SFT data: conversations (OpenAI `messages` JSONL) as token ids trained on the assistant's turns only, packed
several to a row with no attention and no position shared between conversations.

Encoding. The conversation is rendered by the tokenizer's chat template (`Tokenizer.encode_chat`, the one
function serving and export use too). An assistant turn's tokens are those the template adds when that message is
appended to the conversation so far, from after the opening `<|im_start|><|assistant|>\\n` (the generation prompt,
which the model is given) through the end-of-turn token `<|im_end|>` (which it must learn to emit); anything the
template writes after it is not trained on. Every assistant turn of a multi-turn conversation is trained on.

Packing. Each conversation of n tokens gives n - 1 (input, target) positions: the target of a conversation's last
token would be the next conversation's first, so it is never scored. Conversations are placed in order into rows
of `seq_len` positions (a row that cannot take the next one is closed and padded), and each carries its own
segment id: the model restarts positions at each segment and masks attention across them
(`Transformer.hidden_states(segments=...)`). The order is a seeded shuffle per epoch, so a batch depends only on
(seed, epoch, row) and the loader resumes exactly from `state_dict()`.

Bad conversations are counted by reason and skipped, never trained on: malformed JSON fields, an unknown role, no
assistant turn, an empty assistant turn, and (by `overlong`) conversations longer than seq_len + 1 tokens —
"drop" skips them, "truncate" keeps their first seq_len + 1 tokens when some trained token remains.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kamado.data.jsonl import iter_records
from kamado.errors import DataError
from kamado.model.loss import IGNORE_INDEX
from kamado.tokenizer.chat import ROLES
from kamado.tokenizer.tokenizer import Tokenizer

END_OF_TURN = "<|im_end|>"


@dataclass
class Encoded:
    ids: list[int]
    trained: list[bool]  # per token: whether predicting it is trained on

    def targets(self) -> torch.Tensor:
        """Targets of the inputs ids[:-1]: the next token where it is trained, IGNORE_INDEX elsewhere."""
        return torch.tensor([t if ok else IGNORE_INDEX for t, ok in zip(self.ids[1:], self.trained[1:], strict=True)])


def check_messages(messages: Any) -> str | None:
    """Why `messages` cannot be trained on (a reason for the report), or None."""
    if not isinstance(messages, list) or not messages:
        return "no messages list"
    for m in messages:
        if not isinstance(m, Mapping) or not isinstance(m.get("content"), str):
            return "malformed message"
        if m.get("role") not in ROLES:
            return "unknown role"
    turns = [m["content"] for m in messages if m["role"] == "assistant"]
    if not turns:
        return "no assistant turn"
    if any(not t.strip() for t in turns):
        return "empty assistant turn"
    return None


def _extends(ids: list[int], prefix: list[int]) -> None:
    if ids[: len(prefix)] != prefix:
        raise DataError("the chat template does not render a conversation as an extension of its beginning")


def encode_conversation(tok: Tokenizer, messages: Sequence[Mapping[str, str]]) -> Encoded:
    """Token ids of a conversation and which of them are trained (assistant content + end-of-turn token)."""
    end = tok.token_id(END_OF_TURN)
    ids: list[int] = []
    trained: list[bool] = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt = tok.encode_chat(messages[:i], add_generation_prompt=True)
        full = tok.encode_chat(messages[: i + 1], add_generation_prompt=False)
        _extends(prompt, ids)
        _extends(full, prompt)
        turn = full[len(prompt) :]
        stop = turn.index(end) + 1 if end in turn else len(turn)
        trained += [False] * (len(prompt) - len(ids)) + [True] * stop + [False] * (len(turn) - stop)
        ids = full
    return Encoded(ids, trained)


def read_conversations(
    paths: Sequence[str | Path], tok: Tokenizer, seq_len: int, overlong: str = "drop"
) -> tuple[list[Encoded], Counter[str]]:
    """Encoded conversations of JSONL files (`{"messages": [...]}` per line) and the count of each skip reason."""
    kept: list[Encoded] = []
    skipped: Counter[str] = Counter()
    for path in paths:
        for _, record in iter_records(Path(path), text_field=None):
            why = check_messages(record.get("messages"))
            if why is not None:
                skipped[why] += 1
                continue
            enc = encode_conversation(tok, record["messages"])
            if len(enc.ids) > seq_len + 1:
                if overlong == "drop":
                    skipped["longer than the context (dropped)"] += 1
                    continue
                enc = Encoded(enc.ids[: seq_len + 1], enc.trained[: seq_len + 1])
                if not any(enc.trained[1:]):
                    skipped["longer than the context (nothing trained left after truncation)"] += 1
                    continue
                skipped["longer than the context (truncated, kept)"] += 1
            kept.append(enc)
    if not kept:
        raise DataError(f"no usable conversation in {', '.join(map(str, paths))} (skipped: {dict(skipped)})")
    return kept, skipped


class PackedConversations:
    """Batches (x, y, segments) [batch_size, seq_len] of packed conversations, endlessly, epoch after epoch."""

    def __init__(self, convs: list[Encoded], seq_len: int, batch_size: int, seed: int, pad_id: int = 0):
        self.convs, self.seq_len, self.batch_size, self.seed, self.pad_id = convs, seq_len, batch_size, seed, pad_id
        self.epoch, self.row = 0, 0
        self._rows: list[list[int]] = self._pack(0)

    def _pack(self, epoch: int) -> list[list[int]]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.convs))
        rows: list[list[int]] = [[]]
        used = 0
        for i in order.tolist():
            n = len(self.convs[i].ids) - 1
            if used + n > self.seq_len:
                rows.append([])
                used = 0
            rows[-1].append(i)
            used += n
        return rows

    def rows_per_epoch(self) -> int:
        return len(self._pack(self.epoch))

    def _next_row(self) -> list[int]:
        if self.row >= len(self._rows):
            self.epoch, self.row = self.epoch + 1, 0
            self._rows = self._pack(self.epoch)
        self.row += 1
        return self._rows[self.row - 1]

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        shape = (self.batch_size, self.seq_len)
        x = torch.full(shape, self.pad_id, dtype=torch.long)
        y = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
        seg = torch.full(shape, -1, dtype=torch.long)
        for b in range(self.batch_size):
            at = 0
            for j, i in enumerate(self._next_row()):
                c = self.convs[i]
                n = len(c.ids) - 1
                x[b, at : at + n] = torch.tensor(c.ids[:-1])
                y[b, at : at + n] = c.targets()
                seg[b, at : at + n] = j
                at += n
        return x, y, seg

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "row": self.row, "seed": self.seed, "conversations": len(self.convs)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("conversations") != len(self.convs) or state.get("seed") != self.seed:
            raise DataError(
                f"the SFT data changed since the checkpoint ({state.get('conversations')} conversations, seed "
                f"{state.get('seed')}; now {len(self.convs)}, seed {self.seed}): resuming would not be exact"
            )
        self.epoch, self.row = int(state["epoch"]), int(state["row"])
        self._rows = self._pack(self.epoch)
