"""Reading a judge's reply: pure functions, one per output format of the benchmarks' judge prompts.

- "[[rating]]" / "[[評価]]" (MT-Benches): FastChat's rule, the first "[[N]]", else the first "[N]"
  (fastchat/llm_judge/common.py, one_score_pattern and its backup). One change: a number outside 1-10 is no
  rating (FastChat would average a "[[0]]" or a "[[15]]"); the prompts ask for 1-10.
- "[[A]]" (FastChat's pairwise prompts): "[[A]]" anywhere wins, else "[[B]]", else "[[C]]" (a tie), as FastChat.
- "last" (Rakuda's pair-ja prompt, which asks for 1, 2 or 3 on the last line): the last digit of the reply, as
  yuzu-ai/japanese-llm-ranking's helper_judge.py reads it: 1 = the answer shown first, 2 = the second, 3 = a tie.
- "json-grade" (ELYZA-tasks-100, gpt4-autoeval): a JSON object {"reason": ..., "grade": 1..5}. gpt4-autoeval asks
  the API for JSON mode; a generic endpoint has none, so the object is also found inside surrounding text
  (a code fence), and a bare `"grade": N` is accepted last.

Each returns None when the reply holds no verdict: the caller keeps the judgment with score -1 (winner "error").
"""

from __future__ import annotations

import json
import re

ERROR_OUTPUT = "$ERROR$"  # FastChat's text for a judgment (or an answer) that a failed call left empty
ONE_SCORE = re.compile(r"\[\[(\d+\.?\d*)\]\]")
ONE_SCORE_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")
LAST_DIGIT = re.compile(r"\d")
GRADE_FIELD = re.compile(r'"grade"\s*:\s*(\d+)')


def parse_rating(reply: str, low: float = 1, high: float = 10) -> float | None:
    """MT-Bench single-answer grading: the first "[[N]]" (else the first "[N]"), if it lies in [low, high]."""
    m = ONE_SCORE.search(reply) or ONE_SCORE_BACKUP.search(reply)
    if m is None:
        return None
    value = float(m.group(1))
    return value if low <= value <= high else None


def parse_pair_verdict(reply: str, output_format: str) -> str | None:
    """Pairwise: "A" (the answer shown first is better), "B" (the second), "tie", or None."""
    if output_format == "last":
        digits = LAST_DIGIT.findall(reply)
        if not digits:
            return None
        return {1: "A", 2: "B", 3: "tie"}.get(int(digits[-1]))
    if output_format == "[[A]]":
        for mark, verdict in (("[[A]]", "A"), ("[[B]]", "B"), ("[[C]]", "tie")):
            if mark in reply:
                return verdict
        return None
    raise ValueError(f"unknown pairwise output format {output_format!r}")


def parse_elyza_grade(reply: str) -> int | None:
    """ELYZA-tasks-100: the integer "grade" 1-5 of the reply's JSON object."""
    candidates = [reply.strip()]
    start, end = reply.find("{"), reply.rfind("}")
    if 0 <= start < end:
        candidates.append(reply[start : end + 1])
    for text in candidates:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            grade = obj.get("grade")
            if isinstance(grade, int) and not isinstance(grade, bool) and 1 <= grade <= 5:
                return grade
            return None
    m = GRADE_FIELD.search(reply)
    if m and 1 <= int(m.group(1)) <= 5:
        return int(m.group(1))
    return None
