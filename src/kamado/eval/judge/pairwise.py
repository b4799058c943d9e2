"""Rakuda: the model's answer against reference models' answers, judged in both orders.

Rakuda (yuzu-ai/japanese-llm-ranking) ranks models from pairwise battles: the judge reads two answers to one
question with its pair-ja prompt and names the better one (1, 2, or 3 for "cannot choose") on its last line.
Judges favour one position, so every pair is judged twice, the model's answer first (g1) and then the reference's
first (g2); the Bradley-Terry fit (bradley_terry.py) estimates that position bias along with the strengths.
The reference answers are Rakuda's own (answers/gpt-4-20230713, gpt-3.5-turbo, claude-2).

Records are FastChat's pairwise `model_judgment` records:

    {"question_id", "model_1", "model_2", "g1_winner", "g2_winner", "judge": [judge model, prompt name],
     "g1_user_prompt", "g1_judgment", "g2_user_prompt", "g2_judgment", "turn": 1, "tstamp"}

with winners "model_1", "model_2", "tie" or "error" (no verdict in the reply, or a failed call: then the
judgment is "$ERROR$" and a "g1_error"/"g2_error" field says why).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from kamado.eval.generate import EndpointGenerator
from kamado.eval.judge.benchmarks import JudgePrompt, Question
from kamado.eval.judge.cache import JudgmentCache
from kamado.eval.judge.calls import ERROR_OUTPUT, JUDGE_MAX_TOKENS, JudgeCall, Reply, ask_judge, judge_call
from kamado.eval.judge.verdicts import parse_pair_verdict

G1_MAP = {"A": "model_1", "B": "model_2"}  # g1: model_1's answer shown first
G2_MAP = {"A": "model_2", "B": "model_1"}  # g2: model_2's answer shown first


def judge_rakuda(
    questions: Sequence[Question],
    answers: Mapping[Any, Sequence[str]],
    model: str,
    references: Mapping[str, Mapping[Any, str]],
    judge: EndpointGenerator,
    prompt: JudgePrompt,
    cache: JudgmentCache,
    max_tokens: int = JUDGE_MAX_TOKENS,
) -> list[dict[str, Any]]:
    """One record per (question, reference model): the model as model_1, the reference as model_2."""
    games: list[tuple[dict[str, Any], JudgeCall | None, JudgeCall | None]] = []
    for q in questions:
        ans = list(answers.get(q.question_id, ()))
        ours = ans[0] if ans else ERROR_OUTPUT
        for ref_model, ref_answers in references.items():
            if q.question_id not in ref_answers:
                continue
            theirs = ref_answers[q.question_id]
            g1 = prompt.template.format(question=q.turns[0], answer_a=ours, answer_b=theirs)
            g2 = prompt.template.format(question=q.turns[0], answer_a=theirs, answer_b=ours)
            rec: dict[str, Any] = {"question_id": q.question_id, "model_1": model, "model_2": ref_model}
            rec |= {"judge": [judge.name, prompt.name], "g1_user_prompt": g1, "g2_user_prompt": g2, "turn": 1}
            if ours == ERROR_OUTPUT:
                games.append((rec, None, None))
                continue
            c1 = judge_call(q.turns, [ours, theirs], judge.name, prompt.system_prompt, g1, max_tokens)
            c2 = judge_call(q.turns, [theirs, ours], judge.name, prompt.system_prompt, g2, max_tokens)
            games.append((rec, c1, c2))
    calls = [c for _, *pair in games for c in pair if c is not None]
    replies = iter(ask_judge(judge, cache, calls, "judging rakuda"))
    no_answer = Reply(ERROR_OUTPUT, "no answer")
    out = []
    for rec, first, second in games:
        for g, judged, mapping in (("g1", first is not None, G1_MAP), ("g2", second is not None, G2_MAP)):
            reply = next(replies) if judged else no_answer
            verdict = parse_pair_verdict(reply.text, prompt.output_format) if not reply.error else None
            rec[f"{g}_winner"] = "error" if verdict is None else mapping.get(verdict, verdict)
            rec[f"{g}_judgment"] = reply.text
            if reply.error:
                rec[f"{g}_error"] = reply.error
        rec["tstamp"] = time.time()
        out.append(rec)
    return out


def rakuda_battles(judgments: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One battle per judged order (g1 and g2 of each record), errors left out:
    {"model_a", "model_b", "winner": "model_a" | "model_b" | "tie", "first": the model shown first, "question_id"}.
    model_a is the record's model_1; g1 showed model_1 first, g2 model_2."""
    out = []
    for r in judgments:
        a, b = r["model_1"], r["model_2"]
        for g, first in (("g1", a), ("g2", b)):
            w = r.get(f"{g}_winner")
            if w in ("model_1", "model_2", "tie"):
                winner = {"model_1": "model_a", "model_2": "model_b", "tie": "tie"}[w]
                out.append(
                    {"model_a": a, "model_b": b, "winner": winner, "first": first, "question_id": r["question_id"]}
                )
    return out
