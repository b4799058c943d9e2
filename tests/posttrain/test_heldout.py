"""Held-out scores for the post-training table: per-task metrics and chance levels worked by hand, and the
engine's greedy answers equal plain KV-cache greedy decoding."""

from __future__ import annotations

import pytest

from kamado.model.generate import SamplingParams, generate
from kamado.posttrain import heldout
from kamado.posttrain.heldout import answer_all, chance_level, heldout_scores

from .conftest import small_model

NLI = ["entailment", "contradiction", "neutral"]


def test_chance_is_a_uniform_guess_among_each_prompts_labels():
    assert chance_level([{"label_list": NLI}] * 4) == pytest.approx(1 / 3)
    assert chance_level([{"label_list": NLI}, {"label_list": ["0", "1"]}]) == pytest.approx((1 / 3 + 1 / 2) / 2)
    assert chance_level([{"label_list": ["Ａ", "A", "B"]}]) == pytest.approx(1 / 2)  # equal after NFKC
    assert chance_level([{"label_list": []}]) is None
    assert chance_level([{"label_list": NLI, "metric": "char_f1"}]) is None


def test_scores_per_task_and_their_mean(monkeypatch):
    records = [
        {"task": "jnli", "answer": "entailment", "label_list": NLI, "metric": "exact_match"},
        {"task": "jnli", "answer": "neutral", "label_list": NLI, "metric": "exact_match"},
        {"task": "niilc", "answer": "東京都", "metric": "char_f1"},
        {"task": "jsts", "answer": "1.0", "metric": "pearson"},
        {"task": "jsts", "answer": "3.0", "metric": "pearson"},
        {"task": "jsts", "answer": "5.0", "metric": "pearson"},
    ]
    answers = ["entailment", "contradiction", "東京", "2.0", "2.5", "4.0"]
    monkeypatch.setattr(heldout, "answer_all", lambda *a, **k: answers)
    rows = {r["task"]: r for r in heldout_scores(None, None, records)}
    assert rows["jnli"]["score"] == 0.5 and rows["jnli"]["chance"] == pytest.approx(1 / 3) and rows["jnli"]["n"] == 2
    assert rows["niilc"]["score"] == pytest.approx(0.8) and rows["niilc"]["exact_match"] == 0.0
    assert rows["niilc"]["chance"] is None
    # Pearson of (1, 3, 5) against (2, 2.5, 4): deviations (-2, 0, 2) and (-5/6, -1/3, 7/6) -> 4 / sqrt(8 · 13/6)
    assert rows["jsts"]["score"] == pytest.approx(4 / (8 * 13 / 6) ** 0.5) and rows["jsts"]["metric"] == "pearson"
    assert rows["mean"]["score"] == pytest.approx((0.5 + 0.8 + 4 / (8 * 13 / 6) ** 0.5) / 3)
    assert rows["mean"]["n"] == 6


def test_answers_are_the_models_greedy_continuations_up_to_the_end_of_turn(tok):
    model = small_model(tok.vocab_size, max_seq_len=96).eval()
    records = [{"messages": [{"role": "user", "content": q}]} for q in ("猫は？", "犬は何と鳴く？", "長い" * 60)]
    got = answer_all(model, tok, records, max_new_tokens=10)
    end = tok.token_id("<|im_end|>")
    for r, text in zip(records[:2], got, strict=False):
        ids = generate(model, tok.encode_chat(r["messages"]), SamplingParams(10, 0.0, stop_ids=(end, tok.eos_id)))
        assert text == tok.decode([i for i in ids if i not in (end, tok.eos_id)], skip_special=True)
    assert got[2] == ""  # the prompt and its answer would not fit the context: no answer, not an error
