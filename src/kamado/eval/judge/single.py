"""Single-answer grading, written as FastChat's `model_judgment` single records:

    {"question_id", "model", "judge": [judge model, prompt name], "user_prompt", "judgment", "score", "turn", "tstamp"}

- MT-Bench and the Japanese MT-Bench (FastChat's gen_judgment.py, single mode): turn 1 with single-v1, or
  single-math-v1 and the reference answer's turn 1 for math, reasoning and coding; turn 2 with the multi-turn
  prompts, which show the whole conversation (and both reference turns). Rating 1-10 from "[[N]]".
- ELYZA-tasks-100 (gpt4-autoeval): the question, the reference output, the task's eval_aspect and the answer in its
  prompt, grade 1-5 from the reply's JSON. An empty answer gets grade 1 without a call, as gpt4-autoeval does.

A reply without a rating: score -1, kept. A failed call, or an answer the generator could not produce: judgment
"$ERROR$", score -1 and an "error" field, kept; the report counts the two apart.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kamado.eval.generate import EndpointGenerator
from kamado.eval.judge.benchmarks import JudgePrompt, Question, single_prompt_name
from kamado.eval.judge.cache import JudgmentCache
from kamado.eval.judge.calls import ERROR_OUTPUT, JUDGE_MAX_TOKENS, JudgeCall, ask_judge, judge_call
from kamado.eval.judge.verdicts import parse_elyza_grade, parse_rating

ELYZA_NO_RESPONSE = json.dumps({"reason": "No response", "grade": 1})


@dataclass(frozen=True)
class SingleItem:
    """One judgment to make: its record so far, and the call (None when the outcome is known without one)."""

    record: dict[str, Any]
    output_format: str
    call: JudgeCall | None = None
    judgment: str = ""  # the outcome when there is no call
    score: float = -1
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _fill(template: str, **fields: str) -> str:
    return template.format(**fields)


def mt_bench_items(
    questions: Sequence[Question],
    answers: Mapping[Any, Sequence[str]],
    model: str,
    judge_model: str,
    prompts: Mapping[str, JudgePrompt],
    max_tokens: int = JUDGE_MAX_TOKENS,
) -> list[SingleItem]:
    """Turn 1, then turn 2, of every question (FastChat's order of matches)."""
    items = []
    for turn in (1, 2):
        for q in questions:
            if len(q.turns) < turn:
                continue
            jp = prompts[single_prompt_name(q, turn)]
            ans = list(answers.get(q.question_id, ()))
            refs = {f"ref_answer_{k + 1}": r for k, r in enumerate(q.reference[:turn])}
            if turn == 1:
                user = _fill(jp.template, question=q.turns[0], answer=ans[0] if ans else "", **refs)
            else:
                full = ans + [""] * (2 - len(ans))
                user = _fill(
                    jp.template,
                    question_1=q.turns[0],
                    question_2=q.turns[1],
                    answer_1=full[0],
                    answer_2=full[1],
                    **refs,
                )
            record = {"question_id": q.question_id, "model": model, "judge": [judge_model, jp.name]}
            record |= {"user_prompt": user, "turn": turn}
            if len(ans) < turn or ERROR_OUTPUT in ans[:turn]:
                items.append(SingleItem(record, jp.output_format, judgment=ERROR_OUTPUT, error="no answer"))
                continue
            call = judge_call(q.turns[:turn], ans[:turn], judge_model, jp.system_prompt, user, max_tokens)
            items.append(SingleItem(record, jp.output_format, call))
    return items


def elyza_items(
    questions: Sequence[Question],
    answers: Mapping[Any, Sequence[str]],
    model: str,
    judge_model: str,
    prompt: JudgePrompt,
    max_tokens: int = JUDGE_MAX_TOKENS,
) -> list[SingleItem]:
    items = []
    for q in questions:
        ans = list(answers.get(q.question_id, ()))
        pred = ans[0] if ans else ""
        user = _fill(
            prompt.template,
            input_text=q.turns[0],
            output_text=q.reference[0] if q.reference else "",
            eval_aspect=q.eval_aspect,
            pred=pred,
        )
        record = {"question_id": q.question_id, "model": model, "judge": [judge_model, prompt.name]}
        record |= {"user_prompt": user, "turn": 1}
        if not ans or pred == ERROR_OUTPUT:
            items.append(SingleItem(record, prompt.output_format, judgment=ERROR_OUTPUT, error="no answer"))
        elif pred == "":
            items.append(SingleItem(record, prompt.output_format, judgment=ELYZA_NO_RESPONSE, score=1))
        else:
            call = judge_call(q.turns, [pred], judge_model, prompt.system_prompt, user, max_tokens)
            items.append(SingleItem(record, prompt.output_format, call))
    return items


def score_reply(reply: str, output_format: str) -> float | None:
    if output_format == "json-grade":
        grade = parse_elyza_grade(reply)
        return None if grade is None else float(grade)
    return parse_rating(reply)


def judge_single(
    items: Sequence[SingleItem], judge: EndpointGenerator, cache: JudgmentCache, desc: str = "judging"
) -> list[dict[str, Any]]:
    """The judgment records, in the items' order."""
    calls = [it.call for it in items if it.call is not None]
    replies = iter(ask_judge(judge, cache, calls, desc))
    out = []
    for it in items:
        rec = dict(it.record)
        if it.call is None:
            rec |= {"judgment": it.judgment, "score": it.score}
            error = it.error
        else:
            reply = next(replies)
            score = score_reply(reply.text, it.output_format) if not reply.error else None
            rec |= {"judgment": reply.text, "score": -1 if score is None else _number(score)}
            error = reply.error
        rec["tstamp"] = time.time()
        if error:
            rec["error"] = error
        out.append(rec)
    return out


def _number(x: float) -> float | int:
    return int(x) if float(x).is_integer() else x
