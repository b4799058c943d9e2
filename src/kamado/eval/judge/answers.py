"""The model's answers to a judge benchmark, in FastChat's `model_answer` JSONL format:

    {"question_id", "answer_id", "model_id", "choices": [{"index": 0, "turns": [turn 1, turn 2]}], "tstamp"}

All questions' turn 1 go to the generator together (batched by the engine or sent concurrently to an endpoint),
then all turn 2s, each with the conversation so far (question 1, the model's answer 1, question 2), as FastChat's
gen_model_answer.py builds it. Sampling follows FastChat: the category's temperature (0 for math, coding,
reasoning, extraction; 0.7 for writing, roleplay and other benchmarks' questions), up to 1024 new tokens; a fixed
seed per question keeps a sampled answer reproducible.

Resumable: a question already answered in the file is not asked again. An answer the generator failed to produce
(an endpoint error) is written as FastChat's "$ERROR$" and asked again on the next run; the judge never sees it
(its judgment is an error, counted as such).
"""

from __future__ import annotations

import json
import time
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kamado.atomic import atomic_write_text
from kamado.eval.generate import Generator, Prompt
from kamado.eval.judge.benchmarks import TEMPERATURE, Question, iter_jsonl
from kamado.eval.judge.verdicts import ERROR_OUTPUT


@dataclass(frozen=True)
class AnswerSettings:
    max_tokens: int = 1024  # FastChat's max_new_token
    temperature: float | None = None  # None: the question category's (FastChat's temperature_config)
    seed: int = 0


def safe_name(name: str) -> str:
    """A model or judge name as a file name (org/model -> org--model, as ja-vicuna-qa-benchmark names them)."""
    return name.replace("/", "--").replace(":", "__") or "model"


def answer_complete(record: dict[str, Any], n_turns: int) -> bool:
    try:
        turns = record["choices"][0]["turns"]
    except (KeyError, IndexError, TypeError):
        return False
    return len(turns) >= n_turns and all(isinstance(t, str) and t != ERROR_OUTPUT for t in turns[:n_turns])


def read_answers(path: Path) -> dict[Any, dict[str, Any]]:
    """question_id -> the last record for it in a model_answer file (a torn last line is skipped)."""
    return {r["question_id"]: r for r in iter_jsonl(path) if isinstance(r, dict) and "question_id" in r}


def _messages(q: Question, upto: int, answers: Sequence[str]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    for t in range(upto + 1):
        out.append({"role": "user", "content": q.turns[t]})
        if t < upto:
            out.append({"role": "assistant", "content": answers[t]})
    return out


def generate_answers(
    gen: Generator, questions: Sequence[Question], path: Path, settings: AnswerSettings, desc: str = "answers"
) -> dict[Any, list[str]]:
    """Answer the questions not yet answered in `path` and rewrite it; returns question_id -> answer turns."""
    records = read_answers(path)
    pending = [q for q in questions if not answer_complete(records.get(q.question_id, {}), len(q.turns))]
    got: dict[Any, list[str]] = {q.question_id: [] for q in pending}
    for turn in range(max((len(q.turns) for q in pending), default=0)):
        asked = [q for q in pending if len(q.turns) > turn and ERROR_OUTPUT not in got[q.question_id]]
        prompts = []
        for q in asked:
            temperature = settings.temperature
            if temperature is None:
                temperature = TEMPERATURE.get(q.category, 0.7)
            seed = (settings.seed + zlib.crc32(f"{q.question_id}/{turn}".encode())) % 2**31 if temperature > 0 else None
            messages = _messages(q, turn, got[q.question_id])
            prompts.append(Prompt.chat(messages, max_tokens=settings.max_tokens, temperature=temperature, seed=seed))
        for q, c in zip(asked, gen.generate(prompts, desc=f"{desc}, turn {turn + 1}"), strict=True):
            got[q.question_id].append(ERROR_OUTPUT if c.finish_reason == "error" else c.text)
    for q in pending:
        turns = got[q.question_id] + [ERROR_OUTPUT] * (len(q.turns) - len(got[q.question_id]))
        records[q.question_id] = {
            "question_id": q.question_id,
            "answer_id": uuid.uuid4().hex[:22],
            "model_id": gen.name,
            "choices": [{"index": 0, "turns": turns}],
            "tstamp": time.time(),
        }
    if pending or not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records.values()))
    return {
        q.question_id: list(records[q.question_id]["choices"][0]["turns"][: len(q.turns)])
        for q in questions
        if q.question_id in records
    }
