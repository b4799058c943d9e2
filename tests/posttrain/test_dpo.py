"""DPO: the loss against its closed form, the pairs' answer-only scoring, bad pairs counted, training raises the
reward accuracy and margin on its own pairs."""

from __future__ import annotations

import math

import pytest
import torch

from kamado.config import RunConfig
from kamado.errors import DataError
from kamado.model.loss import IGNORE_INDEX
from kamado.posttrain.dpo import (
    DPOTrainer,
    PairLoader,
    dpo_loss,
    encode_pair,
    pair_batch,
    prepare_pairs,
    reference_logps,
    sequence_logps,
)
from kamado.train.callbacks import Checkpointer

from .conftest import small_model

T = torch.tensor


def test_sigmoid_loss_matches_the_closed_form():
    # chosen -10, rejected -12, both references -11, beta 0.1: h = 2, loss = log(1 + e^-0.2)
    losses, cr, rr = dpo_loss(T([-10.0]), T([-12.0]), T([-11.0]), T([-11.0]))  # beta = 0.1 by default
    assert float(losses[0]) == pytest.approx(0.598139, abs=1e-6)
    assert float(cr[0]) == pytest.approx(0.1) and float(rr[0]) == pytest.approx(-0.1)
    smoothed, _, _ = dpo_loss(T([-10.0]), T([-12.0]), T([-11.0]), T([-11.0]), beta=0.1, label_smoothing=0.1)
    assert float(smoothed[0]) == pytest.approx(0.618139, abs=1e-6)  # 0.9·log(1+e^-0.2) + 0.1·log(1+e^0.2)


def test_ipo_loss_is_the_squared_distance_of_the_margin_to_one_over_two_beta():
    losses, _, _ = dpo_loss(T([-10.0]), T([-12.0]), T([-11.0]), T([-11.0]), beta=0.1, loss_type="ipo")
    assert float(losses[0]) == pytest.approx((2 - 5) ** 2)  # (h - 1/(2·0.1))² = (2 - 5)²
    at_target, _, _ = dpo_loss(T([-1.0]), T([-6.0]), T([-3.0]), T([-3.0]), beta=0.1, loss_type="ipo")
    assert float(at_target[0]) == 0.0


def test_the_loss_depends_on_the_reference_and_the_gradient_favours_the_chosen():
    pc, pr = T([-10.0], requires_grad=True), T([-12.0], requires_grad=True)
    loss, _, _ = dpo_loss(pc, pr, T([-9.0]), T([-12.0]), beta=0.5)
    assert float(loss[0]) == pytest.approx(math.log1p(math.exp(0.5)))  # h = 2 - 3 = -1
    loss.sum().backward()
    assert pc.grad is not None and pr.grad is not None and pc.grad[0] < 0 < pr.grad[0]
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(pc, pr, pc, pr, loss_type="hinge")


def test_sequence_logps_sum_and_mean_over_scored_tokens_only():
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 2] = math.log(3.0)  # p(2) = 3/6 at position 0
    y = T([[2, 1, IGNORE_INDEX]])
    want = math.log(0.5) + math.log(1 / 4)
    assert float(sequence_logps(logits, y)[0]) == pytest.approx(want)
    assert float(sequence_logps(logits, y, average=True)[0]) == pytest.approx(want / 2)
    one = T([[IGNORE_INDEX, 1, IGNORE_INDEX]])  # a single scored token: its mean is itself
    assert float(sequence_logps(logits, one, average=True)[0]) == pytest.approx(math.log(1 / 4))


PROMPT = [{"role": "user", "content": "日本の首都は？"}]


def test_a_pair_scores_only_the_answer_tokens(tok):
    c_ids, c_ok, r_ids, r_ok = encode_pair(tok, {"prompt": PROMPT, "chosen": "東京です。", "rejected": "大阪です。"})
    end = tok.token_id("<|im_end|>")
    assert [i for i, ok in zip(c_ids, c_ok, strict=True) if ok] == [*tok.encode("東京です。"), end]
    assert [i for i, ok in zip(r_ids, r_ok, strict=True) if ok] == [*tok.encode("大阪です。"), end]
    prompt_len = len(tok.encode_chat(PROMPT))
    assert c_ids[:prompt_len] == r_ids[:prompt_len] == tok.encode_chat(PROMPT)
    # an earlier assistant turn in a multi-turn prompt is context, not scored
    multi = [*PROMPT, {"role": "assistant", "content": "東京。"}, {"role": "user", "content": "本当？"}]
    ids, ok, _, _ = encode_pair(tok, {"prompt": multi, "chosen": "はい。", "rejected": "いいえ。"})
    assert [i for i, k in zip(ids, ok, strict=True) if k] == [*tok.encode("はい。"), end]


def test_bad_pairs_are_counted_and_skipped(tok):
    good = {"prompt": PROMPT, "chosen": "東京です。", "rejected": "大阪です。"}
    records = [
        good,
        {**good, "rejected": "東京です。"},
        {**good, "chosen": ""},
        {"prompt": PROMPT, "chosen": "x"},
        {**good, "prompt": [{"role": "wizard", "content": "?"}]},
        {**good, "prompt": [*PROMPT, {"role": "assistant", "content": "a"}]},
        {**good, "chosen": "長い" * 200},
    ]
    kept, skipped = prepare_pairs(records, tok, seq_len=64)
    assert len(kept) == 1
    assert skipped == {
        "chosen identical to rejected": 1,
        "empty answer": 1,
        "chosen/rejected missing": 1,
        "prompt: unknown role": 1,
        "prompt is not a conversation ending in a user turn": 1,
        "longer than the context": 1,
    }


def _pairs(tok, n=12):
    cities = ["東京", "大阪", "京都", "札幌", "福岡", "仙台", "名古屋", "神戸", "横浜", "広島", "奈良", "金沢"]
    records = [
        {
            "prompt": [{"role": "user", "content": f"{c}について一言。"}],
            "chosen": f"{c}は良い町です。",
            "rejected": "知らない。",
        }
        for c in cities[:n]
    ]
    kept, skipped = prepare_pairs(records, tok, seq_len=64)
    assert not skipped
    return kept


def test_reference_logps_are_those_of_each_pair_alone(tok):
    model = small_model(tok.vocab_size).eval()
    pairs = _pairs(tok, 5)
    reference_logps(model, pairs, batch=2)
    for p in pairs:
        x, y = pair_batch([p])
        want = sequence_logps(model(x), y)
        assert p["ref_chosen_logp"] == pytest.approx(float(want[0]), rel=1e-5)
        assert p["ref_rejected_logp"] == pytest.approx(float(want[1]), rel=1e-5)


def _dpo_cfg(tmp_path, steps):
    cfg = RunConfig(out_dir=str(tmp_path / "dpo"))
    cfg.train.steps, cfg.train.batch_size, cfg.train.peak_flops, cfg.train.eval_every = steps, 4, 1e9, 0
    cfg.train.log_every, cfg.train.dtype = 1, "fp32"
    cfg.optim.lr, cfg.optim.weight_decay = 3e-3, 0.0
    cfg.schedule.kind, cfg.schedule.warmup_steps = "constant", 0
    cfg.checkpoint.every, cfg.stability.enabled = 0, False
    cfg.dpo.beta = 0.5
    return cfg


def _accuracy(model, pairs):
    x, y = pair_batch(pairs)
    with torch.no_grad():
        logps = sequence_logps(model(x), y)
    P = len(pairs)
    ref = T([p["ref_chosen_logp"] for p in pairs] + [p["ref_rejected_logp"] for p in pairs])
    _, cr, rr = dpo_loss(logps[:P], logps[P:], ref[:P], ref[P:], beta=0.5)
    return float((cr > rr).float().mean()), float((cr - rr).mean())


def test_a_dpo_round_raises_reward_accuracy_and_margin_on_its_pairs(tok, tmp_path):
    model = small_model(tok.vocab_size)
    pairs = _pairs(tok)
    reference_logps(model, pairs)
    _, margin0 = _accuracy(model, pairs)
    assert abs(margin0) < 1e-4  # the policy is its reference: every reward is 0 (up to rounding)
    cfg = _dpo_cfg(tmp_path, 15)
    DPOTrainer(cfg, model, PairLoader(pairs, 4, seed=0), cfg.out_dir).fit()
    acc, margin = _accuracy(model.eval(), pairs)
    assert acc >= 0.9 and margin > 0.5


def test_dpo_resumes_exactly_after_a_kill(tok, tmp_path):
    pairs = _pairs(tok)
    reference_logps(small_model(tok.vocab_size), pairs)
    full_cfg = _dpo_cfg(tmp_path / "full", 8)
    full = DPOTrainer(full_cfg, small_model(tok.vocab_size), PairLoader(pairs, 4, seed=1), full_cfg.out_dir)
    full.fit()
    cfg = _dpo_cfg(tmp_path / "cut", 4)
    cfg.checkpoint.every = 2
    DPOTrainer(
        cfg, small_model(tok.vocab_size), PairLoader(pairs, 4, seed=1), cfg.out_dir, None, [Checkpointer()]
    ).fit()
    cfg.train.steps = 8  # the same run, continued from its step-4 checkpoint
    loader = PairLoader(pairs, 4, seed=1)
    resumed = DPOTrainer(cfg, small_model(tok.vocab_size, seed=9), loader, cfg.out_dir, None, [Checkpointer()])
    resumed.fit()
    assert loader.index != 0 or loader.epoch > 0
    for a, b in zip(full.model.parameters(), resumed.model.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_the_pair_loader_resumes_exactly_and_refuses_other_pairs(tok):
    pairs = _pairs(tok)
    reference_logps(small_model(tok.vocab_size), pairs)
    a = PairLoader(pairs, 5, seed=2)
    for _ in range(3):  # 15 of 12 pairs: into the second epoch
        a.next_batch()
    state = a.state_dict()
    b = PairLoader(pairs, 5, seed=2)
    b.load_state_dict(state)
    assert all(torch.equal(p, q) for p, q in zip(a.next_batch(), b.next_batch(), strict=True))
    with pytest.raises(
        DataError, match=r"^the round's pairs changed since the checkpoint: resuming would not be exact$"
    ):
        PairLoader(pairs[:-1], 5, seed=2).load_state_dict(state)  # fewer pairs, same seed
    with pytest.raises(
        DataError, match=r"^the round's pairs changed since the checkpoint: resuming would not be exact$"
    ):
        PairLoader(pairs, 5, seed=3).load_state_dict(state)  # same pairs, another seed
    with pytest.raises(DataError, match=r"^pairs need their reference log-probs \(kamado"):
        PairLoader(_pairs(tok, 3), 1, seed=0)
    with pytest.raises(DataError, match=r"^no preference pair to train on$"):
        PairLoader([], 1, seed=0)


def test_a_pair_batch_holds_each_answer_s_tokens_and_targets(tok):
    pairs = _pairs(tok, 3)
    x, y = pair_batch(pairs, pad_id=7)
    rows = [p["_c"] for p in pairs] + [p["_r"] for p in pairs]
    assert x.shape == (6, max(len(ids) for ids, _ in rows) - 1)
    for b, (ids, ok) in enumerate(rows):
        n = len(ids) - 1
        assert x[b, :n].tolist() == ids[:-1] and (x[b, n:] == 7).all()
        assert y[b, :n].tolist() == [t if k else IGNORE_INDEX for t, k in zip(ids[1:], ok[1:], strict=True)]
        assert (y[b, n:] == IGNORE_INDEX).all()


def test_every_pair_once_per_epoch(tok):
    pairs = _pairs(tok, 12)
    reference_logps(small_model(tok.vocab_size), pairs)
    loader = PairLoader(pairs, 1, seed=4)
    key = {tuple(p["_c"][0]): p["chosen"] for p in pairs}

    def epoch():
        out = []
        for _ in range(12):
            x, _, _ = loader.next_batch()
            out.append(next(c for ids, c in key.items() if list(ids[:-1]) == x[0, : len(ids) - 1].tolist()))
        return out

    first, second = epoch(), epoch()
    assert sorted(first) == sorted(second) == sorted(p["chosen"] for p in pairs) and first != second


@pytest.mark.parametrize("loss_type", ["sigmoid", "ipo"])
def test_the_dpo_trainer_objective_is_the_loss_of_its_batch_worked_from_log_probs(tok, tmp_path, loss_type):
    pairs = _pairs(tok, 4)
    model = small_model(tok.vocab_size)
    reference_logps(small_model(tok.vocab_size, seed=3), pairs, average=loss_type == "ipo")
    cfg = _dpo_cfg(tmp_path, 1)
    cfg.dpo.loss_type, cfg.dpo.beta, cfg.dpo.label_smoothing = loss_type, 0.3, 0.1
    trainer = DPOTrainer(cfg, model, PairLoader(pairs, 4, seed=0), cfg.out_dir)
    x, y, ref = PairLoader(pairs, 4, seed=0).next_batch()
    with torch.no_grad():
        loss, m = trainer.objective((x, y, ref))
        logits = model(x).float().log_softmax(-1)
    lp = []
    for b in range(8):  # log-probs by hand: sum (sigmoid) or mean (ipo) over the scored targets
        vals = [float(logits[b, t, int(y[b, t])]) for t in range(y.shape[1]) if int(y[b, t]) != IGNORE_INDEX]
        lp.append(sum(vals) / len(vals) if loss_type == "ipo" else sum(vals))
    h = [(lp[i] - lp[4 + i]) - (float(ref[i]) - float(ref[4 + i])) for i in range(4)]
    if loss_type == "ipo":
        want = [(v - 1 / (2 * 0.3)) ** 2 for v in h]
    else:
        want = [0.9 * math.log1p(math.exp(-0.3 * v)) + 0.1 * math.log1p(math.exp(0.3 * v)) for v in h]
    assert float(loss) == pytest.approx(sum(want) / 4, rel=1e-4)
    cr = [0.3 * (lp[i] - float(ref[i])) for i in range(4)]
    rr = [0.3 * (lp[4 + i] - float(ref[4 + i])) for i in range(4)]
    assert m["reward_margin"] == pytest.approx(sum(c - r for c, r in zip(cr, rr, strict=True)) / 4, rel=1e-4)
    assert m["reward_accuracy"] == sum(c > r for c, r in zip(cr, rr, strict=True)) / 4
    assert m["chosen_logps"] == pytest.approx(sum(lp[:4]) / 4, rel=1e-4)
    assert m["rejected_logps"] == pytest.approx(sum(lp[4:]) / 4, rel=1e-4)


def test_reward_accuracy_counts_ties_as_wrong(tok, tmp_path):
    """A pair whose policy equals its reference (both rewards 0) is not counted as ranked right."""
    pairs = _pairs(tok, 2)
    model = small_model(tok.vocab_size)
    cfg = _dpo_cfg(tmp_path, 1)
    reference_logps(model, pairs, batch=2)  # the policy is its own reference
    trainer = DPOTrainer(cfg, model, PairLoader(pairs, 2, seed=0), cfg.out_dir)
    with torch.no_grad():
        _, m = trainer.objective(PairLoader(pairs, 2, seed=0).next_batch())
    assert m["reward_accuracy"] == 0.0 and m["reward_margin"] == pytest.approx(0.0, abs=1e-6)


def test_the_pair_context_rule_is_exact_at_its_boundary_and_counts_every_skip(tok):
    good = {"prompt": PROMPT, "chosen": "東京です。", "rejected": "大阪です。"}
    n = max(len(encode_pair(tok, good)[0]), len(encode_pair(tok, good)[2]))
    kept, skipped = prepare_pairs([good, {**good, "chosen": ""}, {**good, "chosen": ""}], tok, seq_len=n - 1)
    assert len(kept) == 1 and skipped == {"empty answer": 2}
    kept, skipped = prepare_pairs([good, good], tok, seq_len=n - 2)
    assert kept == [] and skipped == {"longer than the context": 2}


def test_drawn_pairs_replace_the_unusable_ones_until_the_round_is_full(tok):
    import numpy as np

    from kamado.posttrain.dpo import draw_pairs

    first = _pairs(tok, 3)
    first = [{k: v for k, v in p.items() if not k.startswith("_")} for p in first]
    long = {"prompt": PROMPT, "chosen": "長い" * 200, "rejected": "短い。"}
    cities = ["東京", "大阪", "京都", "札幌", "福岡", "仙台"]
    short = [{"prompt": PROMPT, "chosen": f"{c}です。", "rejected": "いいえ。"} for c in cities]
    pool = [long] * 6 + short  # half the pool is too long for the context
    for seed in range(5):
        kept, skipped = draw_pairs(first, pool, 8, tok, 64, np.random.default_rng(seed))
        assert len(kept) == 8  # 3 first + 5 usable draws, however many long ones came up on the way
        assert [p["chosen"] for p in kept[:3]] == [p["chosen"] for p in first]
        assert len({p["chosen"] for p in kept[3:]}) == 5 and all(p["chosen"] != long["chosen"] for p in kept)
        assert skipped == ({"longer than the context": skipped["longer than the context"]} if skipped else {})
        assert skipped.total() <= 6
    a, _ = draw_pairs(first, pool, 8, tok, 64, np.random.default_rng(1))
    b, _ = draw_pairs(first, pool, 8, tok, 64, np.random.default_rng(1))
    assert [p["chosen"] for p in a] == [p["chosen"] for p in b]  # the seed fixes the draw
    kept, skipped = draw_pairs(first, pool, 20, tok, 64, np.random.default_rng(0))
    assert len(kept) == 9 and skipped == {"longer than the context": 6}  # the pool ran out: every usable pair
    kept, skipped = draw_pairs(first, pool, 2, tok, 64, np.random.default_rng(0))
    assert len(kept) == 2 and not skipped  # enough already: nothing drawn
