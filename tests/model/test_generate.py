"""KV-cache generation against full recompute, and the sampling filters."""

import torch

from kamado.config import ModelConfig
from kamado.model.generate import SamplingParams, filter_logits, generate
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
    from kamado.model.generate import KVCache

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
