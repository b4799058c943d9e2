"""Reading judges' replies: FastChat's "[[N]]" rule, Rakuda's last digit, ELYZA's JSON grade."""

from __future__ import annotations

import pytest

from kamado.eval.judge.verdicts import parse_elyza_grade, parse_pair_verdict, parse_rating


@pytest.mark.parametrize(
    ("reply", "rating"),
    [
        ("評価：[[5]]", 5.0),
        ("Rating: [[7.5]]", 7.5),
        ("First [[3]] then [[9]]", 3.0),  # FastChat takes the first match (re.search)
        ("Rating: [6]", 6.0),  # FastChat's backup pattern
        ("[[2]] beats [8]", 2.0),  # the double brackets first
        ("Rating: [[10]]", 10.0),
        ("Rating: [[0]]", None),  # outside 1-10: no rating (FastChat would average it)
        ("Rating: [[11]]", None),
        ("Rating: eight", None),
        ("", None),
        ('"[[rating]]", for example: "Rating: [[5]]" - [[4]]', 5.0),  # echoing the prompt's example counts, as upstream
    ],
)
def test_rating_follows_fastchat(reply: str, rating: float | None) -> None:
    assert parse_rating(reply) == rating


@pytest.mark.parametrize(
    ("reply", "verdict"),
    [
        ("アシスタント1の方が良い。\n1", "A"),
        ("アシスタント2が良い\n2", "B"),
        ("選べません\n3", "tie"),
        ("回答1と回答2を比べると…\n結論：２", "B"),  # full-width digits are digits (Python's \d, as upstream)
        ("score 4", None),  # a last digit that is no verdict
        ("no digits at all", None),
    ],
)
def test_rakuda_verdict_is_the_last_digit(reply: str, verdict: str | None) -> None:
    assert parse_pair_verdict(reply, "last") == verdict


def test_fastchat_pairwise_marks() -> None:
    assert parse_pair_verdict("[[B]] ... [[A]]", "[[A]]") == "A"  # "[[A]]" anywhere is checked first
    assert parse_pair_verdict("verdict: [[C]]", "[[A]]") == "tie"
    assert parse_pair_verdict("A is better", "[[A]]") is None
    with pytest.raises(ValueError):
        parse_pair_verdict("1", "[[rating]]")


@pytest.mark.parametrize(
    ("reply", "grade"),
    [
        ('{"reason": "良い", "grade": 5}', 5),
        ('```json\n{"reason": "普通", "grade": 3}\n```', 3),
        ('採点: {"reason": "x", "grade": 2} 以上', 2),
        ('{"reason": "x", "grade": 6}', None),
        ('{"reason": "x", "grade": "4"}', None),  # gpt4-autoeval wants an integer
        ('{"reason": "x", "grade": true}', None),
        ('{"reason": "x", "grade": 4.0}', None),
        ('reason: ok, "grade": 4', 4),  # no JSON object, but the field
        ("4点です", None),
    ],
)
def test_elyza_grade(reply: str, grade: int | None) -> None:
    assert parse_elyza_grade(reply) == grade
