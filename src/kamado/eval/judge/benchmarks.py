"""The four judge benchmarks: where their files are, their questions, reference answers and judge prompts.

A data folder has one sub-folder per benchmark, the layout of the shared benchmark folder (its SOURCES.md):

    ja_mt_bench/      question.jsonl, reference_answer/gpt-4.jsonl, judge_ja_prompts.jsonl  (Stability-AI/FastChat)
    mt_bench/         question.jsonl, reference_answer/gpt-4.jsonl, judge_prompts.jsonl     (lm-sys/FastChat)
    rakuda/           questions.jsonl, judge_prompts.jsonl, answers/MODEL.jsonl    (yuzu-ai/japanese-llm-ranking)
    elyza_tasks_100/  dataset.jsonl (input_text, output_text, eval_aspect), prompt_eval.txt (gpt4-autoeval)

Any file may also be gzipped (`NAME.gz`): the repo's samples/eval ships them so. The judge prompts are the
benchmarks' own, read from these files; kamado writes none of its own.

Two choices a reader may question:
- The Japanese prompts (judge_ja_prompts.jsonl) have no multi-turn versions, and jp-stable judges turn 1 only
  (its README generates answers with --max-turns 1). Turn 2 of the Japanese MT-Bench is judged with FastChat's
  English multi-turn prompts (mt_bench/judge_prompts.jsonl), as for the English MT-Bench.
- ELYZA-tasks-100 ships no grading prompt; gpt4-autoeval's (assets/prompt_eval.txt, MIT) is the one used by the
  published Japanese leaderboards, so it is shipped as a data file. A data folder without it (the shared one) falls
  back to the repo's copy in samples/eval.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kamado.errors import DataError

BENCHMARKS = ("ja_mt_bench", "mt_bench", "rakuda", "elyza100")
FOLDERS = {"ja_mt_bench": "ja_mt_bench", "mt_bench": "mt_bench", "rakuda": "rakuda", "elyza100": "elyza_tasks_100"}
NEED_REF_CATEGORIES = ("math", "reasoning", "coding")  # FastChat's NEED_REF_CATS (arena-hard-200 aside)
RAKUDA_REFERENCES = ("gpt-4-20230713", "gpt-3.5-turbo", "claude-2")
REPO_SAMPLES = Path(__file__).resolve().parents[4] / "samples" / "eval"
ELYZA_PROMPT = "elyza_tasks_100/prompt_eval.txt"

# FastChat's sampling temperature per MT-Bench category; other categories (Rakuda's) get 0.7, as upstream.
TEMPERATURE = {
    "writing": 0.7,
    "roleplay": 0.7,
    "extraction": 0.0,
    "math": 0.0,
    "coding": 0.0,
    "reasoning": 0.0,
    "stem": 0.1,
    "humanities": 0.1,
}


@dataclass(frozen=True)
class Question:
    question_id: int | str
    category: str
    turns: tuple[str, ...]
    reference: tuple[str, ...] = ()  # reference answer per turn (MT-Bench math/reasoning/coding; ELYZA's output)
    eval_aspect: str = ""  # ELYZA-tasks-100's task-specific grading notes


@dataclass(frozen=True)
class JudgePrompt:
    """One line of a FastChat judge-prompt file."""

    name: str
    system_prompt: str
    template: str
    output_format: str  # "[[rating]]" / "[[評価]]" / "[[A]]" / "last" (Rakuda) / "json-grade" (ELYZA)


def find_file(path: Path) -> Path | None:
    """`path`, else `path.gz`."""
    for p in (path, path.with_name(path.name + ".gz")):
        if p.is_file():
            return p
    return None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    found = find_file(path)
    if found is None:
        raise DataError(f"{path}: not found (nor {path.name}.gz); give --data-dir a benchmark folder (see --help)")
    opener: Any = gzip.open if found.suffix == ".gz" else open
    rows = []
    with opener(found, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{found}:{n}: not JSON ({e.msg})") from None
    return rows


def bench_dir(bench: str, data_dir: Path) -> Path:
    if bench not in FOLDERS:
        raise DataError(f"unknown benchmark {bench!r} (one of {', '.join(BENCHMARKS)})")
    return Path(data_dir) / FOLDERS[bench]


def _reference_turns(path: Path) -> dict[Any, tuple[str, ...]]:
    return {r["question_id"]: tuple(r["choices"][0]["turns"]) for r in read_jsonl(path)}


def load_questions(bench: str, data_dir: Path, limit: int | None = None) -> list[Question]:
    """The benchmark's questions in file order, the first `limit` of them."""
    d = bench_dir(bench, data_dir)
    out: list[Question] = []
    try:
        if bench in ("ja_mt_bench", "mt_bench"):
            refs = _reference_turns(d / "reference_answer" / "gpt-4.jsonl")
            for r in read_jsonl(d / "question.jsonl"):
                ref = refs.get(r["question_id"], ()) if r["category"] in NEED_REF_CATEGORIES else ()
                if r["category"] in NEED_REF_CATEGORIES and len(ref) < len(r["turns"]):
                    raise DataError(f"{d}: question {r['question_id']} ({r['category']}) has no reference answer")
                out.append(Question(r["question_id"], r["category"], tuple(r["turns"]), ref))
        elif bench == "rakuda":
            out = [
                Question(r["question_id"], r["category"], tuple(r["turns"][:1]))
                for r in read_jsonl(d / "questions.jsonl")
            ]
        else:  # ELYZA-tasks-100: numbered 1..100 in file order, one turn
            for n, r in enumerate(read_jsonl(d / "dataset.jsonl"), 1):
                out.append(Question(n, "elyza", (r["input_text"],), (r["output_text"],), r.get("eval_aspect", "")))
    except (KeyError, TypeError, IndexError) as e:
        raise DataError(f"{d}: a record lacks a field the benchmark needs ({e!r})") from None
    if not out:
        raise DataError(f"{d}: no questions")
    return out[:limit] if limit is not None else out


def _prompt_file(path: Path) -> dict[str, JudgePrompt]:
    try:
        return {
            r["name"]: JudgePrompt(r["name"], r["system_prompt"], r["prompt_template"], r["output_format"])
            for r in read_jsonl(path)
        }
    except KeyError as e:
        raise DataError(f"{path}: a judge prompt lacks {e}") from None


def judge_prompts(bench: str, data_dir: Path) -> dict[str, JudgePrompt]:
    """The prompts a benchmark's judge uses, by FastChat name (single-v1, single-math-v1, their -multi-turn
    versions; pair-ja for Rakuda; "elyza" for ELYZA)."""
    d = bench_dir(bench, data_dir)
    if bench == "mt_bench":
        return _prompt_file(d / "judge_prompts.jsonl")
    if bench == "ja_mt_bench":
        english = _prompt_file(bench_dir("mt_bench", data_dir) / "judge_prompts.jsonl")
        turn2 = {k: v for k, v in english.items() if k in ("single-v1-multi-turn", "single-math-v1-multi-turn")}
        return {**turn2, **_prompt_file(d / "judge_ja_prompts.jsonl")}
    if bench == "rakuda":
        return _prompt_file(d / "judge_prompts.jsonl")
    for base in (Path(data_dir), REPO_SAMPLES):
        if (base / ELYZA_PROMPT).is_file():
            text = (base / ELYZA_PROMPT).read_text(encoding="utf-8")
            return {"elyza": JudgePrompt("gpt4-autoeval", "", text, "json-grade")}
    raise DataError(f"{Path(data_dir) / ELYZA_PROMPT}: ELYZA's grading prompt not found (copy samples/eval's)")


def single_prompt_name(question: Question, turn: int) -> str:
    """FastChat's choice: the math prompt (with the reference answer) for math/reasoning/coding, the multi-turn
    prompt for turn 2."""
    name = "single-math-v1" if question.category in NEED_REF_CATEGORIES else "single-v1"
    return name + ("-multi-turn" if turn == 2 else "")


def rakuda_reference_answers(data_dir: Path, models: tuple[str, ...] = RAKUDA_REFERENCES) -> dict[str, dict[Any, str]]:
    """Reference model -> question id -> its answer (FastChat model_answer files under rakuda/answers/)."""
    d = bench_dir("rakuda", data_dir) / "answers"
    return {m: {qid: turns[0] for qid, turns in _reference_turns(d / f"{m}.jsonl").items()} for m in models}


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Records of a JSONL file that may end in a torn line (a killed writer): that line is skipped."""
    if not path.is_file():
        return
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue
