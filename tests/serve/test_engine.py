"""The engine's continuous batching gives exactly what one-request-at-a-time decoding gives, whatever the arrival
order, slot count or prefill chunk; sampling is per request; stops and limits end requests where they should."""

import threading

import pytest
import torch

from kamado.model.generate import SamplingParams, generate
from kamado.serve.engine import Engine, GenParams
from kamado.serve.load import load_for_serving
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
