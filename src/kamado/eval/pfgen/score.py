"""Score a `trials.jsonl(.xz)` the way pfgen-bench's `pfgen_eval.py` does, into the same `result.json`.

Each answer gets, per reference set k of its question (R, or P / S / T), fluency_k and truthfulness_k divided by
the number of sets (`kamado.eval.pfgen.ngram`), and helpfulness (`kamado.eval.pfgen.keywords`); its `average` is
(Σ fluency + Σ truthfulness + helpfulness) / 3. A question scores the mean over its answers; the overall score is
the mean over "trials", where trial j takes the j-th answer of every question in file order (upstream's files
are `LC_ALL=C sort`ed, so a "trial" is a rank, not a generation round — we keep that, so the published standard
deviations come out), and its standard deviation is the population one. Every number is rounded where upstream
rounds it: 6 digits per set score, 5 for an answer's average and helpfulness, a question's means and the overall
per-metric means (accumulated question by question, rounding after each step, as upstream), 4 for the score and
its deviation, 1 for lengths.

Python's `sum()` of floats became compensated (Neumaier) in 3.12, and the published `result.json` files were made
with it: a plain left-to-right sum changes e.g. an answer's average 0.41424 into 0.41425. `compensated_sum`
is that algorithm, so the results are the published ones whatever Python runs kamado.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from kamado.errors import DataError
from kamado.eval.pfgen.data import PfgenData, Question, read_json, read_jsonl
from kamado.eval.pfgen.keywords import helpfulness
from kamado.eval.pfgen.ngram import ReferenceNgrams


def compensated_sum(values: Iterable[float]) -> float:
    """CPython 3.12+'s `sum()` of floats (Neumaier's compensated summation); integers add exactly."""
    items = list(values)
    if all(isinstance(x, int) for x in items):
        return sum(items)
    total, c = 0.0, 0.0
    for x in items:
        t = total + x
        c += (total - t) + x if abs(total) >= abs(x) else (x - t) + total
        total = t
    return total + c if c and math.isfinite(c) else total


def mean_std(values: Sequence[float], ndigits: int = 4) -> tuple[float, float]:
    """Upstream's mean and population standard deviation, rounded."""
    mean = compensated_sum(values) / len(values)
    std = math.sqrt(compensated_sum((x - mean) ** 2 for x in values) / len(values))
    return round(mean, ndigits), round(std, ndigits)


class QuestionScorer:
    """Scores answers to one question: an n-gram index per reference set, the keywords."""

    def __init__(self, question: Question) -> None:
        self.question = question
        self.sets = {k: ReferenceNgrams(v) for k, v in question.answers.items()}

    def score(self, answers: Sequence[str]) -> list[dict[str, Any]]:
        """Upstream's `Scorer.score` for each answer: the dict stored under "scores"."""
        n_sets = len(self.sets)
        per_set = {k: (s.fluency(answers).tolist(), s.truthfulness(answers).tolist()) for k, s in self.sets.items()}
        out = []
        for i, answer in enumerate(answers):
            fluency = {k: round(f[i] / n_sets, 6) for k, (f, _) in per_set.items()}
            truth = {k: round(t[i] / n_sets, 6) for k, (_, t) in per_set.items()}
            help_score, missing = helpfulness(answer, self.question.keywords)
            help_score = round(help_score, 5)
            average = (compensated_sum(fluency.values()) + compensated_sum(truth.values()) + help_score) / 3
            out.append(
                {
                    "fluency": fluency,
                    "fluency_discount": 1.0,  # upstream: round(max(1.0, best prefix's discount <= 1), 2)
                    "truthfulness": truth,
                    "helpfulness": help_score,
                    "helpfulness_results": missing,
                    "average": round(average, 5),
                }
            )
        return out


def read_trials(path: Path, data: PfgenData) -> dict[str, list[dict[str, Any]]]:
    """question_id -> its answer records in file order, sorted by question_id; every question must be in `data`."""
    by_text = data.by_text()
    grouped: dict[str, list[dict[str, Any]]] = {}
    for i, d in read_jsonl(path):
        if not isinstance(d.get("question"), str) or not isinstance(d.get("answer"), str):
            raise DataError(f"{path}:{i}: a trial line needs 'question' and 'answer' strings")
        q = by_text.get(d["question"])
        if q is None:
            raise DataError(
                f"{path}:{i}: question {d['question']!r} is not in the pfgen data {data.folder} "
                f"({len(by_text)} questions): give --data with the full set"
            )
        grouped.setdefault(q.question_id, []).append(d)
    if not grouped:
        raise DataError(f"{path}: no answers")
    return dict(sorted(grouped.items()))


def question_result(question: str, answers: list[dict[str, Any]]) -> dict[str, Any]:
    """One question's entry of result.json: mean scores over its answers and five samples from best to worst.
    `answers` is sorted in place by average, best first (upstream sums in that order)."""
    answers.sort(key=lambda a: a["scores"]["average"], reverse=True)
    scores: dict[str, Any] = {"fluency": {}, "truthfulness": {}}
    for m in ("fluency", "truthfulness"):
        for k in answers[0]["scores"][m]:
            scores[m][k] = round(compensated_sum(a["scores"][m][k] for a in answers) / len(answers), 5)
    for m in ("helpfulness", "average"):
        scores[m] = round(compensated_sum(a["scores"][m] for a in answers) / len(answers), 5)
    samples, seen = [], set()
    for ratio in (0.0, 0.25, 0.5, 0.75, 1.0):
        index = round(ratio * (len(answers) - 1))
        if index not in seen:
            seen.add(index)
            samples.append({k: v for k, v in answers[index].items() if k != "question"})
    r: dict[str, Any] = {"question": question}
    r["score"], r["score_std"] = mean_std([a["scores"]["average"] for a in answers])
    r["length"], r["length_std"] = mean_std([len(a["answer"]) for a in answers], 1)
    r["scores"] = scores
    r["samples"] = samples
    return r


def score_trials(
    path: Path, data: PfgenData, progress: bool = True, scorers: dict[str, QuestionScorer] | None = None
) -> dict[str, Any]:
    """The result.json upstream's `pfgen_eval.py` writes for `path` (a `config.json` beside it is copied in).
    `scorers` keeps each question's n-gram index between calls (scoring several files: about half the time)."""
    scorers = {} if scorers is None else scorers
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such trials file")
    grouped = read_trials(path, data)
    result: dict[str, Any] = {
        "input_hash": hashlib.sha1(path.read_bytes()).hexdigest(),
        "metadata_hash": data.metadata_hash(),
    }
    config = path.parent / "config.json"
    if config.is_file():
        result["config"] = read_json(config)
    bar = Progress(TextColumn("pfgen scoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   disable=not progress, transient=True)  # fmt: skip
    with bar:
        task = bar.add_task("scoring", total=len(grouped))
        for qid, answers in grouped.items():
            if qid not in scorers:
                scorers[qid] = QuestionScorer(data.question(qid))
            scores = scorers[qid].score([a["answer"] for a in answers])
            for a, s in zip(answers, scores, strict=True):
                a["scores"] = s
            bar.advance(task)
    result["num_trials"] = min(len(x) for x in grouped.values())
    per_question = [[a["scores"]["average"] for a in x] for x in grouped.values()]
    trial_scores = [compensated_sum(x) / len(x) for x in zip(*per_question, strict=False)]  # to the shortest
    result["score"], result["score_std"] = mean_std(trial_scores)
    lengths = [len(a["answer"]) * 1.0 for x in grouped.values() for a in x]
    result["length"], result["length_std"] = mean_std(lengths, 1)
    overall: dict[str, Any] = {"fluency": {}, "truthfulness": {}}
    questions = {}
    for qid, answers in grouped.items():
        r = question_result(answers[0]["question"], answers)
        for m in ("fluency", "truthfulness"):
            for k, v in r["scores"][m].items():
                overall[m][k] = round(overall[m].get(k, 0.0) + v / len(grouped), 5)
        for m in ("helpfulness", "average"):
            overall[m] = round(overall.get(m, 0.0) + r["scores"][m] / len(grouped), 5)
        questions[qid] = r
    result["scores"] = overall
    result["questions"] = questions
    return result
