"""Bits per character: exact on a uniform model, every token scored once, xz rate definition."""

import lzma
import math

import torch

from kamado.config import ModelConfig
from kamado.eval.bits_per_char import model_bits_per_char, xz_conditional_bits_per_char
from kamado.model.transformer import Transformer


class ByteTok:
    """One token per UTF-8 byte plus EOS=256."""

    eos_id = 256

    def encode(self, text):
        return list(text.encode("utf-8"))


def uniform_model(vocab=257, max_seq_len=16):
    m = Transformer(
        ModelConfig(
            vocab_size=vocab, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_hidden=32, max_seq_len=max_seq_len
        )
    )
    with torch.no_grad():
        m.lm_head.weight.zero_()  # logits all 0 -> p = 1/vocab for every token
    return m


def test_uniform_model_costs_log2_vocab_bits_per_token():
    docs = ["吾輩は猫である。名前はまだ無い。", "abc", "どこで生れたかとんと見当がつかぬ。" * 5]
    tokens = sum(len(d.encode()) + 1 for d in docs)  # every byte and every EOS separator is scored once
    chars = sum(len(d) for d in docs) + len(docs)
    got = model_bits_per_char(uniform_model(), ByteTok(), docs, context=8, batch_size=3)
    assert math.isclose(got, tokens * math.log2(257) / chars, rel_tol=1e-5)


def test_longer_context_never_hurts_a_trained_model_much_and_windows_cover_everything():
    # a model that knows nothing but position: bits/char must not depend on the window layout
    docs = ["x" * 100]
    a = model_bits_per_char(uniform_model(max_seq_len=64), ByteTok(), docs, context=64)
    b = model_bits_per_char(uniform_model(max_seq_len=64), ByteTok(), docs, context=6, batch_size=1)
    assert math.isclose(a, b, rel_tol=1e-5)


def test_xz_conditional_rate_matches_its_definition():
    train, held = ["猫" * 50, "犬の話"], ["猫猫猫の話"]
    size = lambda b: len(lzma.compress(b, preset=9 | lzma.PRESET_EXTREME))  # noqa: E731
    t = "\n".join(train).encode()
    expected = 8 * (size(t + b"\n" + "\n".join(held).encode()) - size(t)) / (len(held[0]) + 1)
    assert xz_conditional_bits_per_char(train, held) == expected
    # having seen the text before makes it cheap; unseen text costs more
    assert xz_conditional_bits_per_char(["猫猫猫の話" * 3], held) < xz_conditional_bits_per_char(["全然違う"], held)
