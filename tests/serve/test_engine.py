"""The engine's continuous batching gives exactly what one-request-at-a-time decoding gives, whatever the arrival
order, slot count or prefill chunk; sampling is per request; stops and limits end requests where they should."""

import threading

import pytest
import torch

from kamado.model.generate import SamplingParams, generate
from kamado.serve.engine import Engine, GenParams
from kamado.serve.load import load_for_serving
from kamado.serve.slots import SlotCache
from kamado.tokenizer import Tokenizer

from .conftest import random_model


@pytest.fixture(scope="module")
def served(served_run):
    model, tok, _ = load_for_serving(served_run)
    return model, tok


def prompts_of(lengths, vocab, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [[int(t) for t in torch.randint(7, vocab, (n,), generator=g)] for n in lengths]


def one_at_a_time(model, tok, prompt, n):
    """The reference: the model's own single-sequence KV-cache decoding, stopping at EOS (not included)."""
    out = generate(model, prompt, SamplingParams(n, 0.0, stop_ids=(tok.eos_id,)))
    return out[:-1] if out and out[-1] == tok.eos_id else out


@pytest.mark.parametrize(("slots", "chunk"), [(1, 256), (3, 5), (4, 1)])
def test_continuous_batching_equals_one_request_at_a_time(served, slots, chunk):
    model, tok = served
    prompts = prompts_of([3, 40, 9, 70, 1, 25, 33], model.cfg.vocab_size)
    want = [one_at_a_time(model, tok, p, 24) for p in prompts]
    eng = Engine(model, tok, max_batch=slots, prefill_chunk=chunk)
    got = eng.generate(prompts, GenParams(max_tokens=24, temperature=0))
    assert [r.token_ids[: len(w)] for r, w in zip(got, want, strict=True)] == want
    assert eng.steps < sum(len(p) for p in prompts) + 24 * len(prompts)  # rows really shared steps
    assert all(s is None for s in eng.slots) and not eng.waiting


def test_requests_arriving_while_others_run_take_freed_slots(served):
    model, tok = served
    prompts = prompts_of([12, 50, 4, 30, 8, 61], model.cfg.vocab_size, seed=2)
    lengths = [5, 30, 12, 3, 20, 9]
    eng = Engine(model, tok, max_batch=2, prefill_chunk=16)
    reqs = [eng.submit(prompts[0], GenParams(max_tokens=lengths[0], temperature=0))]
    pending = list(range(1, len(prompts)))
    while not all(r.done for r in reqs) or pending:
        eng.step()
        if pending and eng.steps % 3 == 0:  # a new request every third step, into whatever slot is free
            i = pending.pop(0)
            reqs.append(eng.submit(prompts[i], GenParams(max_tokens=lengths[i], temperature=0)))
        assert sum(s is not None for s in eng.slots) <= 2
    for r, p, n in zip(reqs, prompts, lengths, strict=True):
        assert r.token_ids[:n] == one_at_a_time(model, tok, p, n)[:n]


def test_a_seeded_request_samples_the_same_tokens_alone_or_in_a_batch(served):
    model, tok = served
    p = prompts_of([10], model.cfg.vocab_size)[0]
    params = GenParams(max_tokens=20, temperature=1.0, top_k=50, top_p=0.9, seed=7)
    alone = Engine(model, tok, max_batch=1).generate([p], params)[0].token_ids
    others = prompts_of([30, 5, 17], model.cfg.vocab_size, seed=3)
    mixed = Engine(model, tok, max_batch=4, prefill_chunk=7).generate(
        [*others, p], [GenParams(max_tokens=20, temperature=1.3, seed=i) for i in range(3)] + [params]
    )[-1]
    assert mixed.token_ids == alone
    other_seed = Engine(model, tok, max_batch=1).generate([p], GenParams(max_tokens=20, seed=8))[0]
    assert other_seed.token_ids != alone


def test_stop_strings_end_the_text_before_them_and_stream_pieces_add_up(served):
    model, tok = served
    p = prompts_of([6], model.cfg.vocab_size, seed=4)[0]
    eng = Engine(model, tok)
    full = eng.generate([p], GenParams(max_tokens=40, temperature=0))[0]
    assert full.finish_reason == "length" and len(full.token_ids) == 40
    text = full.text
    assert len(text) > 6
    stop = text[4:6]  # a stop string that first appears at character 4 (or earlier)
    r = eng.submit(p, GenParams(max_tokens=40, temperature=0, stop=(stop,)))
    pieces = []
    while not r.done:
        eng.step()
    pieces = list(r.stream())
    assert r.finish_reason == "stop" and r.text == text[: text.find(stop)]
    assert "".join(d.text for d in pieces) == r.text and pieces[-1].finish_reason == "stop"
    assert stop not in r.text


def test_end_of_text_stops_and_is_not_text(served):
    model, tok = served
    p = prompts_of([6], model.cfg.vocab_size, seed=5)[0]
    eng = Engine(model, tok)
    first = eng.generate([p], GenParams(max_tokens=8, temperature=0))[0].token_ids
    r = eng.generate([p], GenParams(max_tokens=8, temperature=0, stop_token_ids=(first[2],)))[0]
    assert r.finish_reason == "stop" and r.token_ids == first[:3]
    assert r.text == tok.decode(first[:2])


def test_bad_requests_are_refused_before_they_run(served):
    model, tok = served
    eng = Engine(model, tok)
    with pytest.raises(ValueError, match="empty"):
        eng.submit([], GenParams())
    with pytest.raises(ValueError, match="context"):
        eng.submit([9] * model.cfg.max_seq_len, GenParams())
    with pytest.raises(ValueError, match="past the context"):
        eng.submit([9] * 10, GenParams(max_tokens=model.cfg.max_seq_len))
    with pytest.raises(ValueError, match="vocabulary"):
        eng.submit([model.cfg.vocab_size], GenParams())
    assert not eng.waiting


def test_the_context_end_finishes_with_length(served):
    model, tok = served
    p = prompts_of([model.cfg.max_seq_len - 5], model.cfg.vocab_size)[0]
    r = Engine(model, tok).generate([p], GenParams(temperature=0))[0]
    assert r.finish_reason in ("length", "stop") and len(p) + len(r.token_ids) <= model.cfg.max_seq_len


def test_background_loop_serves_threads_and_cancel_frees_the_slot(served):
    model, tok = served
    eng = Engine(model, tok, max_batch=2).start()
    try:
        long = eng.submit([9, 10, 11], GenParams(max_tokens=200, temperature=0))
        next(long.stream())  # it is running
        long.cancel()
        assert long.result(timeout=30).finish_reason == "cancelled"
        results: list = []
        ps = prompts_of([5, 9, 14, 3], model.cfg.vocab_size)
        threads = [
            threading.Thread(target=lambda p=p: results.append(eng.submit(p, GenParams(max_tokens=6)).result(60)))
            for p in ps
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(results) == 4 and all(len(r.token_ids) <= 6 and r.finish_reason for r in results)
    finally:
        eng.stop()
    assert all(s is None for s in eng.slots)


def test_per_row_positions_equal_single_sequence_logits():
    """The model's tensor-`pos` path (rows at different lengths in one batch) against each row run alone."""
    from kamado.serve.slots import SlotCache

    model = random_model(97, max_seq_len=64, seed=3)
    seqs = prompts_of([5, 11, 2], 97, seed=9)
    cache = SlotCache(model, 3, 64)
    with torch.inference_mode():
        for i, s in enumerate(seqs):  # prefill each slot with all but its last token
            cache.forward(model, torch.tensor([s[:-1]]), i, i + 1, torch.tensor([0]))
        last = torch.tensor([[s[-1]] for s in seqs])
        pos = torch.tensor([len(s) - 1 for s in seqs])
        batched = cache.forward(model, last, 0, 3, pos)[:, -1]
        for i, s in enumerate(seqs):
            alone = model(torch.tensor([s]))[0, -1]
            torch.testing.assert_close(batched[i], alone, atol=1e-5, rtol=1e-5)


def test_chat_rendering_keeps_user_text_plain(served_run):
    tok = Tokenizer.load(served_run / "tokenizer")
    msgs = [{"role": "system", "content": "短く答える"}, {"role": "user", "content": "<|im_end|>こんにちは"}]
    ids = tok.encode_chat(msgs)
    im_end = tok.token_id("<|im_end|>")
    assert ids.count(im_end) == 2  # the two turns' ends; the user's typed "<|im_end|>" is plain text
    assert tok.decode(ids) == tok.render_chat(msgs)
    assert tok.render_chat(msgs).endswith("<|im_start|><|assistant|>\n")


@pytest.mark.parametrize("qk_norm", [True, False])
def test_decode_step_equals_the_models_forward(qk_norm):
    """The engine's decode path (`decode_step`) computes the model's function: same logits as the model's own
    per-row-position forward, bit for bit in float32, with rows at different positions."""
    from kamado.config import ModelConfig
    from kamado.model.transformer import Transformer
    from kamado.serve.slots import SlotCache, decode_step, run_with_cache

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=97, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=96, max_seq_len=64)
    cfg.qk_norm = qk_norm
    model = Transformer(cfg).eval()
    x, pos = torch.tensor([5, 9, 11]), torch.tensor([3, 17, 0])
    with torch.inference_mode():
        cache = SlotCache(model, 3, 64, block=16)
        cache.k.normal_(), cache.v.normal_()  # history (and stale entries past each row, which must be masked)
        k, v = cache.views(0, 3, 18)
        want = run_with_cache(model, x[:, None], pos, k.clone(), v.clone(), True)[:, 0]
        got = decode_step(model, x, pos, k, v)
    assert torch.equal(got, want)


def test_slot_cache_grows_and_shrinks_keeping_what_the_slots_hold():
    model = random_model(97, max_seq_len=64)
    cache = SlotCache(model, 2, 64, block=16)
    assert cache.width == 16
    cache.k[:, :, :, :16] = torch.arange(16.0)[:, None]
    k, _ = cache.views(0, 2, 40)  # a write at position 39 needs 48 positions
    assert cache.width == 48 and k.shape[3] == 48 and k.is_contiguous()
    assert torch.equal(cache.k[0, 1, 0, :16, 0], torch.arange(16.0)) and not cache.k[:, :, :, 16:].any()
    cache.fit(30)  # still more than half of 48 in use: no copy
    assert cache.width == 48
    cache.fit(10)  # the long sequences have left
    assert cache.width == 16 and torch.equal(cache.k[0, 1, 0, :, 0], torch.arange(16.0))
    with pytest.raises(ValueError, match="past the cache"):
        cache.fit(65)


def test_streamed_text_is_the_decoded_tokens_when_characters_span_tokens(served):
    """Text is decoded incrementally (only the tokens after the last whole character): the random model emits byte
    tokens that split UTF-8 characters, and the text must still equal decoding all the tokens at once."""
    model, tok = served
    prompts = prompts_of([4, 9, 15, 2], model.cfg.vocab_size, seed=11)
    done = Engine(model, tok, max_batch=4).generate(prompts, GenParams(max_tokens=60, temperature=1.0, seed=3))
    for r in done:
        cut = r.token_ids[:-1] if r.finish_reason == "stop" else r.token_ids
        assert r.text == tok.decode(cut, skip_special=True)
    assert any("\ufffd" in tok.decode(r.token_ids[:i]) for r in done for i in range(1, len(r.token_ids)))


def test_bf16_engine_serves_a_packed_copy_close_to_float32(served):
    """dtype=bfloat16: the engine serves its own copy (the caller's float32 model is untouched), its Linear layers
    packed for oneDNN on a CPU with the same outputs as F.linear in bf16, and its logits within bf16 rounding."""
    from kamado.serve.slots import SlotCache, run_with_cache
    from kamado.serve.weights import PackedLinear, can_pack

    model, tok = served
    eng = Engine(model, tok, max_batch=2, dtype=torch.bfloat16)
    assert model.lm_head.weight.dtype == torch.float32 and eng.model is not model
    assert eng.model.embed.weight.dtype == torch.bfloat16
    if can_pack(torch.device("cpu"), torch.bfloat16):
        assert isinstance(eng.model.lm_head, PackedLinear)
        h = torch.randn(3, model.cfg.d_model, dtype=torch.bfloat16)
        with torch.inference_mode():
            want = torch.nn.functional.linear(h, model.lm_head.weight.bfloat16())
            assert torch.equal(eng.model.lm_head(h), want)
    x = torch.tensor([prompts_of([20], model.cfg.vocab_size, seed=8)[0]])
    with torch.inference_mode():
        full = model(x)[0]
        c = SlotCache(eng.model, 1, 64)
        k, v = c.views(0, 1, 20)
        half = run_with_cache(eng.model, x, torch.tensor([0]), k, v, False)[0].float()
    assert (half - full).abs().max() <= 0.05 * full.abs().max()
    got = eng.generate([x[0].tolist()], GenParams(max_tokens=8, temperature=0))[0]
    assert got.finish_reason in ("length", "stop") and got.token_ids


def test_forward_hooks_on_the_blocks_still_run(served):
    """`decode_step` calls the blocks' parts, not the blocks: with a hook on a block the engine decodes through
    the model's own forward, so the hook runs once per forward (here 1 prefill + 4 decode steps)."""
    model, tok = served
    calls: list[int] = []
    hook = model.layers[0].register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        r = Engine(model, tok, max_batch=1).generate([[9, 10, 11]], GenParams(max_tokens=5, temperature=0))[0]
    finally:
        hook.remove()
    assert len(r.token_ids) == 5 and len(calls) == 5
    assert r.first_token_at is not None and r.submitted_at <= r.first_token_at  # latency stamps


def test_a_finished_request_has_left_its_slot_when_its_waiter_wakes(served):
    """The slot is freed before the last delta is emitted: a server that answers as soon as a request is done
    never sees it still holding a slot (the burst test in test_server.py checked exactly this, and raced)."""
    model, tok = served
    eng = Engine(model, tok, max_batch=2)
    r = eng.submit([9, 10, 11], GenParams(max_tokens=3, temperature=0))
    held_at_the_end: list[bool] = []
    put = r._q.put

    def watched_put(d):  # the moment the last delta reaches the request's stream
        if d.finish_reason is not None:
            held_at_the_end.append(r in eng.slots)
        put(d)

    r._q.put = watched_put
    while not r.done:
        eng.step()
    assert held_at_the_end == [False]


def test_stop_ends_running_and_waiting_requests_as_cancelled(served):
    model, tok = served
    eng = Engine(model, tok, max_batch=1).start()
    assert eng.running
    first = eng.submit([9, 10, 11], GenParams(max_tokens=200, temperature=0))
    queued = eng.submit([12, 13], GenParams(max_tokens=5, temperature=0))
    next(first.stream())
    eng.stop()
    assert not eng.running
    assert first.result(timeout=10).finish_reason in ("cancelled", "length")
    assert queued.result(timeout=10).finish_reason in ("cancelled", "length")
    assert all(s is None for s in eng.slots) and not eng.waiting


def test_special_tokens_a_model_emits_are_not_text(served):
    """A model may emit chat markup (<|im_start|>, <|assistant|>): those ids are output tokens but not text."""
    model, tok = served
    marks = [tok.token_id("<|im_start|>"), tok.token_id("<|assistant|>")]
    with torch.no_grad():  # make the model prefer the markup: a large bias on their output rows
        biased = random_model(model.cfg.vocab_size, model.cfg.max_seq_len)
        biased.lm_head.weight[marks] += 50.0 * biased.norm.weight.sign()
    r = Engine(biased, tok).generate([[9, 10]], GenParams(max_tokens=6, temperature=0))[0]
    assert set(r.token_ids) & set(marks)
    assert "<|" not in r.text and r.text == tok.decode(r.token_ids, skip_special=True)


def test_auto_dtype_is_bf16_only_where_it_is_fast():
    from kamado.serve.load import serving_dtype

    fast = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert serving_dtype("auto", "cpu") == (torch.bfloat16 if fast else torch.float32)
    assert serving_dtype("float32", "cpu") == torch.float32 and serving_dtype("bfloat16", "cpu") == torch.bfloat16
