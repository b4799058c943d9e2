"""What a judge run reports, per benchmark: pure functions from judgment records to JSON and Markdown.

Single-answer benchmarks (MT-Benches 1-10, ELYZA-tasks-100 1-5): the mean score per turn and overall (FastChat's
show_result.py numbers: score -1 left out), the mean per category, and the counts of judgments, of unparseable
replies and of errors (failed calls, missing answers) — so a mean over 3 of 80 judgments can never pass for a mean
over 80. Rakuda: wins, losses and ties against each reference model (show_result's pairwise rule), and the
Bradley-Terry ratings of all the models on Rakuda's Elo-like scale, with the judge's position bias.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from kamado.eval.judge.benchmarks import Question
from kamado.eval.judge.pairwise import rakuda_battles
from kamado.eval.judge.scores import pairwise_scores
from kamado.eval.judge.verdicts import ERROR_OUTPUT

SCALE = {"ja_mt_bench": "1-10", "mt_bench": "1-10", "elyza100": "1-5", "rakuda": "Elo-like"}


def _mean(xs: Sequence[float]) -> float | None:
    return round(sum(xs) / len(xs), 4) if xs else None


def single_report(bench: str, questions: Sequence[Question], records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    category = {q.question_id: q.category for q in questions}
    scored = [r for r in records if r["score"] != -1]
    errors = sum(r["score"] == -1 and r.get("judgment") == ERROR_OUTPUT for r in records)
    by_cat: dict[str, list[float]] = defaultdict(list)
    for r in scored:
        by_cat[category.get(r["question_id"], "?")].append(float(r["score"]))
    turns = sorted({int(r.get("turn", 1)) for r in records})
    return {
        "bench": bench,
        "scale": SCALE[bench],
        "questions": len(questions),
        "judgments": len(records),
        "scored": len(scored),
        "unparseable": len(records) - len(scored) - errors,
        "errors": errors,
        "mean": _mean([float(r["score"]) for r in scored]),
        "turns": {str(t): _mean([float(r["score"]) for r in scored if int(r.get("turn", 1)) == t]) for t in turns},
        "categories": {c: _mean(by_cat[c]) for c in sorted({q.category for q in questions})},
    }


def rakuda_report(
    questions: Sequence[Question], records: Sequence[Mapping[str, Any]], n_bootstrap: int = 1000
) -> dict[str, Any]:
    games: Counter[str] = Counter()
    for r in records:
        for g in ("g1", "g2"):
            if r[f"{g}_winner"] != "error":
                games["judged"] += 1
            elif r.get(f"{g}_judgment") == ERROR_OUTPUT:
                games["errors"] += 1
            else:
                games["unparseable"] += 1
    model = str(records[0]["model_1"]) if records else ""
    versus = {
        ref: pairwise_scores([r for r in records if r["model_2"] == ref]).get(model)
        for ref in sorted({str(r["model_2"]) for r in records})
    }
    battles = rakuda_battles(records)
    report: dict[str, Any] = {
        "bench": "rakuda",
        "scale": SCALE["rakuda"],
        "questions": len(questions),
        "judgments": 2 * len(records),  # both orders of each pair
        "scored": games["judged"],
        "unparseable": games["unparseable"],
        "errors": games["errors"],
        "versus": versus,
        "battles": len(battles),
        "bradley_terry": None,
    }
    if battles:
        from kamado.eval.judge.bradley_terry import fit_bradley_terry, to_markdown

        fit = fit_bradley_terry(battles, n_bootstrap=n_bootstrap)
        report["bradley_terry"] = fit.as_dict()
        report["bradley_terry_table"] = to_markdown(fit)
        report["rating"] = fit.rating(model).rating if model in {r.model for r in fit.ratings} else None
    return report


def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def report_markdown(model: str, judge: str, reports: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = [f"# Judge benchmarks: {model}", "", f"Judge: `{judge}`.", ""]
    lines += ["| benchmark | scale | score | turn 1 | turn 2 | judgments | scored | unparseable | errors |"]
    lines += ["|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in reports:
        if r["bench"] == "rakuda":
            score, t1, t2 = _fmt(r.get("rating"), 0), "", ""
        else:
            score, t1, t2 = _fmt(r["mean"]), _fmt(r["turns"].get("1")), _fmt(r["turns"].get("2"))
        counts = f"{r['judgments']} | {r['scored']} | {r['unparseable']} | {r['errors']}"
        lines.append(f"| {r['bench']} | {r['scale']} | {score} | {t1} | {t2} | {counts} |")
    for r in reports:
        lines += ["", f"## {r['bench']}", ""]
        if r["bench"] != "rakuda":
            lines += ["| category | mean |", "|---|---:|"]
            lines += [f"| {c} | {_fmt(m)} |" for c, m in r["categories"].items()]
            continue
        lines += ["| against | win | loss | tie | no verdict | adjusted win rate |", "|---|---:|---:|---:|---:|---:|"]
        for ref, s in r["versus"].items():
            if s is not None:
                rate = _fmt(s["win_rate_adjusted"], 3)
                lines.append(f"| {ref} | {s['win']} | {s['loss']} | {s['tie']} | {s['errors']} | {rate} |")
        if r["bradley_terry"] is not None:
            lines += [
                "",
                "Bradley-Terry ratings on Rakuda's scale (mean 1000, 400 points per factor of 10 in the odds):",
            ]
            lines += ["", r["bradley_terry_table"]]
    return lines
