"""Compression rate of held-out text: the model's bits per character against xz given the same training text.

A language model is a compressor: with arithmetic coding, text costs −log2 p(text) bits. Dividing by the number
of characters makes models with different tokenizers (and general-purpose compressors) comparable. The baseline
is xz (LZMA, preset 9 | extreme) *conditioned on the same training text*, i.e. the extra bytes xz needs for the
held-out text once it has seen the training text:

    xz rate = 8 · (len(xz(train + heldout)) − len(xz(train))) / chars(heldout)

Documents are joined with one separator each (EOS for the model, "\\n" for xz) and separators count as characters
on both sides.
"""

from __future__ import annotations

import lzma
import math
from collections.abc import Sequence
from functools import cached_property

import torch

from kamado.model.transformer import Transformer
from kamado.tokenizer import Tokenizer


def xz_size(data: bytes) -> int:
    return len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))


class XzBaseline:
    """xz's conditional bits/char on held-out sets, given one training text: xz(train) is compressed once for all
    of them (the tiny recipe scores Japanese and English against the same training text)."""

    def __init__(self, train_docs: Sequence[str]):
        self.train = "\n".join(train_docs).encode("utf-8")

    @cached_property
    def train_size(self) -> int:
        return xz_size(self.train)

    def bits_per_char(self, heldout_docs: Sequence[str]) -> float:
        heldout = "\n".join(heldout_docs)
        extra = xz_size(self.train + b"\n" + heldout.encode("utf-8")) - self.train_size
        return 8.0 * extra / (len(heldout) + 1)


def xz_conditional_bits_per_char(train_docs: Sequence[str], heldout_docs: Sequence[str]) -> float:
    return XzBaseline(train_docs).bits_per_char(heldout_docs)


@torch.no_grad()
def model_bits_per_char(
    model: Transformer,
    tokenizer: Tokenizer,
    heldout_docs: Sequence[str],
    context: int | None = None,
    batch_size: int = 8,
) -> float:
    """−log2 p(heldout) / chars, every token scored once with up to `context` tokens of left context.

    The stream is EOS, doc₁, EOS, doc₂, …, EOS; it is cut into overlapping windows (stride = context / 2) and each
    window scores only the tokens the previous window did not, so every token sees at least context/2 tokens of
    history (except at the start).
    """
    context = context or model.cfg.max_seq_len
    stream = [tokenizer.eos_id]
    for doc in heldout_docs:
        stream += [*tokenizer.encode(doc), tokenizer.eos_id]
    chars = sum(len(d) for d in heldout_docs) + len(heldout_docs)  # one separator char per document
    stride = max(1, context // 2)
    windows: list[tuple[int, int, int]] = []  # (input start, first scored target, end)
    scored = 1  # targets are stream[1:]; position `scored` is the next token to be scored
    while scored < len(stream):
        end = min(len(stream), scored + stride)
        start = max(0, end - context - 1)
        windows.append((start, scored, end))
        scored = end
    was_training = model.training
    model.eval()
    total_nats = 0.0
    for i in range(0, len(windows), batch_size):
        group = windows[i : i + batch_size]
        width = max(end - start - 1 for start, _, end in group)
        x = torch.full((len(group), width), tokenizer.eos_id, dtype=torch.long)
        y = torch.full((len(group), width), -100, dtype=torch.long)
        for row, (start, first, end) in enumerate(group):
            seq = torch.tensor(stream[start:end])
            n = len(seq) - 1
            x[row, :n] = seq[:-1]
            keep = seq[1:].clone()
            keep[: first - start - 1] = -100  # already scored by the previous window
            y[row, :n] = keep
        device = model.lm_head.weight.device
        logits = model(x.to(device)).float()
        nll = torch.nn.functional.cross_entropy(
            logits.transpose(1, 2), y.to(device), ignore_index=-100, reduction="sum"
        )
        total_nats += float(nll)
    model.train(was_training)
    return total_nats / math.log(2) / chars
