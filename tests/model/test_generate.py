"""KV-cache generation against full recompute, and the sampling filters."""

import math

import pytest
import torch

from kamado.config import ModelConfig
from kamado.errors import ConfigError
from kamado.model.generate import KVCache, SamplingParams, filter_logits, generate, sample_next
from kamado.model.transformer import Transformer


def model(**kw):
    torch.manual_seed(1)
    cfg = dict(vocab_size=101, d_model=64, n_layers=3, n_heads=4, n_kv_heads=2, ffn_hidden=96, max_seq_len=48)
    return Transformer(ModelConfig(**{**cfg, **kw})).eval()


@torch.no_grad()
def greedy_recompute(m, prompt, n):
    ids = list(prompt)
    for _ in range(n):
        ids.append(int(m(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt) :]


def test_kv_cache_greedy_equals_full_recompute_token_for_token():
    for qk_norm in (True, False):
        m = model(qk_norm=qk_norm)
        prompt = [5, 17, 3, 99, 42, 8]
        cached = generate(m, prompt, SamplingParams(max_new_tokens=30, temperature=0.0))
        assert cached == greedy_recompute(m, prompt, 30)


def test_chunked_prefill_matches_one_shot():
    m = model()
    x = torch.randint(0, 101, (1, 20))
    with torch.no_grad():
        full = m(x)
        cache = KVCache(m, 1, 20)
        a = m(x[:, :12], cache=cache, pos=0)
        cache.advance(12)
        b = m(x[:, 12:], cache=cache, pos=12)
    torch.testing.assert_close(torch.cat([a, b], 1), full, atol=1e-5, rtol=1e-5)


def test_stop_token_ends_generation_and_max_len_is_respected():
    m = model()
    first = generate(m, [1, 2, 3], SamplingParams(max_new_tokens=5, temperature=0.0))
    stopped = generate(m, [1, 2, 3], SamplingParams(max_new_tokens=5, temperature=0.0, stop_ids=(first[1],)))
    assert stopped == first[: first.index(first[1]) + 1]
    long = generate(m, list(range(40)), SamplingParams(max_new_tokens=100, temperature=0.0))
    # positions 40..47 are processed (max_seq_len 48); the logits at position 47 give one last token
    assert len(long) == 48 - 40 + 1


def test_sampling_is_seeded_and_respects_top_k():
    m = model()
    p = SamplingParams(max_new_tokens=20, temperature=1.0, top_k=3, seed=7)
    assert generate(m, [4, 5], p) == generate(m, [4, 5], p)
    with torch.no_grad():
        logits = m(torch.tensor([[4, 5]]))[0, -1]
    top3 = set(torch.topk(logits, 3).indices.tolist())
    one = generate(m, [4, 5], SamplingParams(max_new_tokens=1, temperature=1.0, top_k=3, seed=0))
    assert one[0] in top3


def test_filter_logits_top_p_keeps_smallest_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = filter_logits(logits, top_k=0, top_p=0.8).isfinite()[0].tolist()
    assert kept == [True, True, False, False]
    kept = filter_logits(logits, top_k=0, top_p=0.81).isfinite()[0].tolist()
    assert kept == [True, True, True, False]
    kept = filter_logits(logits, top_k=1, top_p=1.0).isfinite()[0].tolist()
    assert kept == [True, False, False, False]


def test_sampling_params_refuse_values_torch_would_fail_on():
    with pytest.raises(ConfigError, match=r"^temperature = -1\.0"):
        SamplingParams(temperature=-1.0)
    with pytest.raises(ConfigError, match=r"^top_p = 0"):
        SamplingParams(top_p=0.0)


@pytest.mark.parametrize("temperature", [1e-300, 1e-308])
def test_tiny_temperature_is_greedy_per_row_and_ids_have_shape_batch(temperature):
    """A tiny temperature scales every logit but the top one to -inf (in float64, after shifting each row's top to
    0: unshifted, 3 / 1e-308 would overflow, and another row's top would make this row all -inf)."""
    logits = torch.tensor([[0.5, 3.0, -1.0, 2.9], [-7.0, -9.0, -6.5, -8.0]])
    got = sample_next(logits, SamplingParams(temperature=temperature), torch.Generator().manual_seed(0))
    assert got.tolist() == [1, 2]
    assert sample_next(logits, SamplingParams(temperature=0.0), None).tolist() == [1, 2]


@pytest.mark.parametrize("temperature", [0.5, 4.0])
def test_temperature_divides_the_logits(temperature):
    """p ∝ exp(logit / T) for logits (0, -2, -4): computed by hand, checked on 4000 seeded draws."""
    weights = [math.exp(v / temperature) for v in (0.0, -2.0, -4.0)]
    expected = [w / sum(weights) for w in weights]
    logits = torch.tensor([[0.0, -2.0, -4.0]]).expand(4000, 3)
    ids = sample_next(logits, SamplingParams(temperature=temperature), torch.Generator().manual_seed(3))
    assert ids.shape == (4000,)
    freq = torch.bincount(ids, minlength=3).double() / 4000
    assert freq.tolist() == pytest.approx(expected, abs=0.03)


def test_top_p_one_keeps_even_negligible_tokens():
    logits = torch.tensor([[0.0, -40.0, -45.0]], dtype=torch.float64)  # the mass before the last two rounds to 1
    assert filter_logits(logits, top_k=0, top_p=1.0).isfinite().all()


def test_top_p_keeps_the_smallest_set_reaching_it_exactly():
    logits = torch.zeros(1, 4)  # four tokens of 1/4 each: exact in binary
    assert int(filter_logits(logits, top_k=0, top_p=0.5).isfinite().sum()) == 2
    assert int(filter_logits(logits, top_k=0, top_p=0.51).isfinite().sum()) == 3


def test_filters_apply_to_the_last_dimension_of_any_shape():
    """[batch, positions, vocab]: each position's distribution is filtered on its own."""
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 3, 7, generator=g)
    for top_k, top_p in ((2, 1.0), (0, 0.6), (3, 0.9)):
        got = filter_logits(logits, top_k, top_p)
        for row, out in zip(logits.view(-1, 7), got.view(-1, 7), strict=True):
            order = row.argsort(descending=True).tolist()[: top_k or 7]  # top-k first, renormalised
            probs = row[order].softmax(-1).tolist()
            keep, mass = set(), 0.0
            for i, p in zip(order, probs, strict=True):
                if mass >= top_p:
                    break
                keep.add(i)
                mass += p
            assert {i for i in range(7) if out[i].isfinite()} == keep
            assert torch.equal(out[list(keep)], row[list(keep)])  # kept logits are unchanged


def test_kv_cache_takes_the_model_device_and_the_dtype_asked_for():
    m = model().to("meta")  # a device other than the default one, without a GPU
    cache = KVCache(m, 2, 8, dtype=torch.bfloat16)
    assert cache.k.device.type == cache.v.device.type == "meta"
    assert cache.k.dtype == cache.v.dtype == torch.bfloat16
    assert cache.k.shape == cache.v.shape == (3, 2, 2, 8, 16)
