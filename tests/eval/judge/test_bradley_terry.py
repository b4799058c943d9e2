"""Bradley–Terry fit for Rakuda-style judging: recovery on simulated tournaments, hand-worked cases, the bootstrap."""

import itertools
import json
import math
import random

import numpy as np
import pytest

from kamado.errors import DataError
from kamado.eval.judge.bradley_terry import CENTRE, POINTS_PER_LOGIT, fit_bradley_terry, to_markdown

TRUE = {"m1": -1.0, "m2": -0.4, "m3": 0.0, "m4": 0.5, "m5": 1.2}  # natural log-odds units
BIAS = 0.3  # the judge's advantage for the first-shown answer
LOG3_POINTS = 400 * math.log10(3)  # ≈ 190.85: a 3:1 win ratio on the Elo-like scale


def battle(a, b, winner, first, q):
    return {"model_a": a, "model_b": b, "winner": winner, "first": first, "question_id": q}


def tournament(n_questions, seed, strengths=TRUE, bias=BIAS):
    """Every pair on every question, in both answer orders, outcomes drawn from the BT model with a position bias.
    model_a is always the lower name; which of the two is shown first alternates."""
    rng = np.random.default_rng(seed)
    out = []
    for q in range(n_questions):
        for a, b in itertools.combinations(sorted(strengths), 2):
            for first, second in ((a, b), (b, a)):
                p = 1 / (1 + math.exp(-(bias + strengths[first] - strengths[second])))
                winner = first if rng.random() < p else second
                out.append(battle(a, b, "model_a" if winner == a else "model_b", first, f"q{q}"))
    return out


def true_ratings(strengths=TRUE):
    mean = sum(strengths.values()) / len(strengths)
    return {m: CENTRE + POINTS_PER_LOGIT * (s - mean) for m, s in strengths.items()}


def scaled_gap(result, hi, lo):
    return result.rating(hi).rating - result.rating(lo).rating


def three_to_one(with_ties=False):
    """A beats B 3:1 in each answer order (no position bias): the gap is ln 3 logits exactly. With ties, A wins two
    and ties two in each order: still a score of 3 to 1 if a tie is half a win."""
    if with_ties:
        a_first = ["model_a", "model_a", "tie", "tie"]  # A's score 3/4
        b_first = ["model_a", "model_a", "tie", "tie"]  # shown first, B scores 1/4
    else:
        a_first = ["model_a", "model_a", "model_a", "model_b"]
        b_first = ["model_a", "model_a", "model_a", "model_b"]
    return [battle("A", "B", w, "A", f"q{k}") for k, w in enumerate(a_first)] + [
        battle("A", "B", w, "B", f"q{k}") for k, w in enumerate(b_first)
    ]


def test_recovers_order_gaps_and_position_bias():
    result = fit_bradley_terry(tournament(150, seed=1), n_bootstrap=0)
    assert [r.model for r in result.ratings] == ["m5", "m4", "m3", "m2", "m1"]
    want = true_ratings()
    for r in result.ratings:
        assert r.rating == pytest.approx(want[r.model], abs=30)  # SE ≈ 10 points
    for hi, lo in itertools.combinations(["m5", "m4", "m3", "m2", "m1"], 2):
        assert scaled_gap(result, hi, lo) == pytest.approx(want[hi] - want[lo], abs=35)
    assert np.mean([r.rating for r in result.ratings]) == pytest.approx(CENTRE)
    assert result.position_bias == pytest.approx(POINTS_PER_LOGIT * BIAS, abs=15)  # 52 points; SE ≈ 7
    assert result.n_battles == 150 * 10 * 2 and result.n_questions == 150
    assert all(r.battles == 150 * 4 * 2 and r.wins + r.losses == r.battles and r.ties == 0 for r in result.ratings)


def test_without_position_bias_term_the_bias_leaks_nowhere_but_is_not_reported():
    battles = tournament(100, seed=2)
    with_bias = fit_bradley_terry(battles, n_bootstrap=0)
    without = fit_bradley_terry(battles, n_bootstrap=0, position_bias=False)
    assert without.position_bias == 0.0
    # both orders of every pair were judged, so ignoring the bias shrinks gaps but keeps the order
    assert [r.model for r in without.ratings] == [r.model for r in with_bias.ratings]
    assert 0 < scaled_gap(without, "m5", "m1") < scaled_gap(with_bias, "m5", "m1")


def test_bootstrap_interval_covers_truth_and_narrows_with_more_battles():
    want = true_ratings()
    small = fit_bradley_terry(tournament(40, seed=3), n_bootstrap=200, seed=0)
    large = fit_bradley_terry(tournament(320, seed=4), n_bootstrap=200, seed=0)
    for result in (small, large):
        assert result.n_bootstrap == 200 and result.ci_level == 0.95
        for r in result.ratings:
            assert r.ci_low < r.rating < r.ci_high
            assert r.ci_low <= want[r.model] <= r.ci_high
        lo, hi = result.position_bias_ci
        assert lo < result.position_bias < hi and lo <= POINTS_PER_LOGIT * BIAS <= hi
    # 8x the questions: intervals about sqrt(8) ≈ 2.8x narrower
    for m in TRUE:
        s, g = small.rating(m), large.rating(m)
        assert (g.ci_high - g.ci_low) < 0.55 * (s.ci_high - s.ci_low)
    assert np.diff(large.position_bias_ci)[0] < 0.55 * np.diff(small.position_bias_ci)[0]
    # the same replicates at a 2% level: a sliver around the middle of the 95% interval (percentiles 49 and 51)
    sliver = fit_bradley_terry(tournament(40, seed=3), n_bootstrap=200, seed=0, ci_level=0.02)
    for m in TRUE:
        r, wide = sliver.rating(m), small.rating(m)
        assert wide.ci_low < r.ci_low <= r.ci_high < wide.ci_high
        assert r.ci_high - r.ci_low < 0.1 * (wide.ci_high - wide.ci_low)
        assert abs((r.ci_low + r.ci_high) / 2 - r.rating) < 0.15 * (wide.ci_high - wide.ci_low)


def test_bootstrap_resamples_whole_questions():
    """Each question: the first-shown answer always wins. Any resample of whole questions has as many A-first as
    B-first battles, so the strengths stay equal in every replicate; resampling single battles would not."""
    battles = [battle("A", "B", w, f, f"q{k}") for k in range(30) for w, f in (("model_a", "A"), ("model_b", "B"))]
    result = fit_bradley_terry(battles, n_bootstrap=100)
    for r in result.ratings:
        assert r.rating == pytest.approx(CENTRE) and r.ci_high - r.ci_low < 1e-6
        assert (r.wins, r.losses) == (30, 30)
    assert result.position_bias > 400  # a strong first-shown advantage, finite thanks to the weak prior


def test_swapping_names_swaps_ratings():
    battles = tournament(30, seed=5)
    rename = {"m1": "m5", "m5": "m1"}
    swapped = [{**b, **{k: rename.get(b[k], b[k]) for k in ("model_a", "model_b", "first")}} for b in battles]
    one = fit_bradley_terry(battles, n_bootstrap=50, seed=7)
    two = fit_bradley_terry(swapped, n_bootstrap=50, seed=7)
    for m in TRUE:
        r1, r2 = one.rating(m), two.rating(rename.get(m, m))
        assert (r1.rating, r1.ci_low, r1.ci_high) == pytest.approx((r2.rating, r2.ci_low, r2.ci_high), abs=1e-6)
        assert (r1.wins, r1.losses) == (r2.wins, r2.losses)
    assert one.position_bias == pytest.approx(two.position_bias, abs=1e-6)


def test_labels_a_and_b_do_not_matter_only_who_was_shown_first():
    battles = tournament(30, seed=6)
    flip = {"model_a": "model_b", "model_b": "model_a", "tie": "tie"}
    relabelled = [{**b, "model_a": b["model_b"], "model_b": b["model_a"], "winner": flip[b["winner"]]} for b in battles]
    one = fit_bradley_terry(battles, n_bootstrap=20)
    two = fit_bradley_terry(relabelled, n_bootstrap=20)
    for r1, r2 in zip(one.ratings, two.ratings, strict=True):
        assert r1.model == r2.model and (r1.wins, r1.losses, r1.battles) == (r2.wins, r2.losses, r2.battles)
        assert (r1.rating, r1.ci_low, r1.ci_high) == pytest.approx((r2.rating, r2.ci_low, r2.ci_high), abs=1e-6)


def test_model_that_won_every_battle_gets_a_finite_top_rating():
    battles = tournament(20, seed=8)
    battles += [battle("champ", m, "model_a", f, f"q{q}") for q in range(20) for m in TRUE for f in ("champ", m)]
    result = fit_bradley_terry(battles, n_bootstrap=20)
    top = result.ratings[0]
    assert top.model == "champ" and (top.wins, top.losses, top.ties) == (200, 0, 0)
    assert math.isfinite(top.rating) and math.isfinite(top.ci_high)
    assert result.ratings[1].rating + 200 < top.rating < CENTRE + 2000
    with pytest.raises(DataError, match="no finite"):
        fit_bradley_terry(battles, n_bootstrap=0, prior_sd=None)


def test_hand_worked_three_to_one_without_bias():
    result = fit_bradley_terry(three_to_one(), n_bootstrap=0, prior_sd=None)
    assert scaled_gap(result, "A", "B") == pytest.approx(LOG3_POINTS, abs=1e-6)
    assert result.rating("A").rating == pytest.approx(CENTRE + LOG3_POINTS / 2, abs=1e-6)
    assert result.position_bias == pytest.approx(0.0, abs=1e-6)
    assert (result.rating("A").wins, result.rating("A").losses, result.rating("A").battles) == (6, 2, 8)
    no_bias_term = fit_bradley_terry(three_to_one(), n_bootstrap=0, prior_sd=None, position_bias=False)
    assert scaled_gap(no_bias_term, "A", "B") == pytest.approx(LOG3_POINTS, abs=1e-6)
    # the weak prior shrinks the gap, but only a little
    prior = fit_bradley_terry(three_to_one(), n_bootstrap=0)
    assert 0.9 * LOG3_POINTS < scaled_gap(prior, "A", "B") < LOG3_POINTS - 1e-3


def test_hand_worked_ties_count_as_half_a_win():
    result = fit_bradley_terry(three_to_one(with_ties=True), n_bootstrap=0, prior_sd=None)
    assert scaled_gap(result, "A", "B") == pytest.approx(LOG3_POINTS, abs=1e-6)
    assert result.position_bias == pytest.approx(0.0, abs=1e-6)
    a = result.rating("A")
    assert (a.battles, a.wins, a.losses, a.ties) == (8, 4, 0, 4)


def test_hand_worked_position_bias():
    """A shown first wins 9 of 10 (logit ln 9 = α + d); B shown first wins 5 of 10 (0 = α − d): α = d = ln 3."""
    battles = [battle("A", "B", "model_a" if k < 9 else "model_b", "A", f"q{k}") for k in range(10)]
    battles += [battle("A", "B", "model_b" if k < 5 else "model_a", "B", f"q{k}") for k in range(10)]
    result = fit_bradley_terry(battles, n_bootstrap=0, prior_sd=None)
    assert result.position_bias == pytest.approx(LOG3_POINTS, abs=1e-6)
    assert scaled_gap(result, "A", "B") == pytest.approx(LOG3_POINTS, abs=1e-6)


def test_anchor_pins_its_model_and_keeps_the_gaps():
    battles = tournament(30, seed=9)
    centred = fit_bradley_terry(battles, n_bootstrap=30)
    anchored = fit_bradley_terry(battles, n_bootstrap=30, anchor="m3")
    m3 = anchored.rating("m3")
    assert m3.rating == pytest.approx(CENTRE) and m3.ci_low == pytest.approx(CENTRE) == m3.ci_high
    for m in TRUE:
        assert anchored.rating(m).rating - CENTRE == pytest.approx(scaled_gap(centred, m, "m3"), abs=1e-9)
    hand = fit_bradley_terry(three_to_one(), n_bootstrap=0, prior_sd=None, anchor="B")
    assert hand.rating("A").rating == pytest.approx(CENTRE + LOG3_POINTS, abs=1e-6)


def test_deterministic_given_seed_and_independent_of_battle_order():
    battles = tournament(30, seed=10)
    one = fit_bradley_terry(battles, n_bootstrap=40, seed=3)
    assert fit_bradley_terry(battles, n_bootstrap=40, seed=3) == one
    other = fit_bradley_terry(battles, n_bootstrap=40, seed=4)
    assert other.rating("m1").rating == one.rating("m1").rating
    assert other.rating("m1").ci_low != one.rating("m1").ci_low
    shuffled = list(battles)
    random.Random(0).shuffle(shuffled)
    again = fit_bradley_terry(shuffled, n_bootstrap=40, seed=3)
    for r1, r2 in zip(one.ratings, again.ratings, strict=True):
        assert r1.model == r2.model
        assert (r1.rating, r1.ci_low, r1.ci_high) == pytest.approx((r2.rating, r2.ci_low, r2.ci_high), abs=1e-6)


def test_markdown_and_json():
    result = fit_bradley_terry(three_to_one(), n_bootstrap=20)
    md = to_markdown(result)
    lines = md.splitlines()
    assert lines[0].startswith("| rank | model | rating | 95% CI |")
    a, b = result.ratings
    assert lines[2] == f"| 1 | A | {a.rating:.0f} | {a.ci_low:.0f}–{a.ci_high:.0f} | 8 | 6 | 2 | 0 |"
    assert lines[3].startswith(f"| 2 | B | {b.rating:.0f} |") and a.rating > b.rating
    assert "Position bias" in md
    d = json.loads(json.dumps(result.as_dict()))
    assert [r["model"] for r in d["ratings"]] == ["A", "B"]
    assert d["ratings"][0]["rating"] == pytest.approx(result.rating("A").rating)
    assert d["scale"]["centre"] == 1000 and d["n_bootstrap"] == 20 and d["n_battles"] == 8
    # no replicates: no interval, and still valid JSON
    bare = json.loads(json.dumps(fit_bradley_terry(three_to_one(), n_bootstrap=0).as_dict(), allow_nan=False))
    assert bare["ratings"][0]["ci_low"] is None and bare["position_bias_ci"] == [None, None]


@pytest.mark.parametrize(
    ("battles", "match"),
    [
        ([], "no battles"),
        ([battle("A", "B", "draw", "A", "q1")], "winner must be"),
        ([battle("A", "A", "tie", "A", "q1")], "two different"),
        ([battle("A", "B", "model_a", "C", "q1")], "first must be"),
        ([{"model_a": "A", "model_b": "B", "winner": "tie", "first": "A"}], "question_id"),
        ([battle("A", "B", "model_a", "A", "q1"), battle("C", "D", "model_a", "C", "q1")], "never met"),
    ],
)
def test_malformed_battles(battles, match):
    with pytest.raises(DataError, match=match):
        fit_bradley_terry(battles, n_bootstrap=0)


def test_bad_options():
    with pytest.raises(DataError, match="anchor 'Z'"):
        fit_bradley_terry(three_to_one(), anchor="Z", n_bootstrap=0)
    with pytest.raises(DataError, match="ci_level"):
        fit_bradley_terry(three_to_one(), ci_level=1.5)
