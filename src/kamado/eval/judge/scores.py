"""The numbers of FastChat's show_result.py for any FastChat-format judgment file: `kamado eval judge-scores`.

Single-answer files (records with "score"): per model the number of judgments, the mean score of turn 1, of turn 2
and overall. As show_result.py, judgments with score -1 are left out of every mean (never averaged as zeros) and
the overall mean is over all the model's remaining judgments (not the mean of the two turn means); we also count
them: "unparseable" (the judge replied without a rating) and "errors" (judgment "$ERROR$": the call failed).

Pairwise files (records with "g1_winner"/"g2_winner", FastChat's and ja-vicuna-qa-benchmark's): show_result.py's
pairwise-all mode: a record with an "error" winner is dropped (counted here as "errors"); a record is a win for one
model only when both orders agree, otherwise (either order a tie, or the orders disagree) a tie for both; win rate
= wins / records, adjusted win rate = (wins + ties / 2) / records.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from kamado.data.jsonl import iter_records
from kamado.errors import DataError
from kamado.eval.judge.verdicts import ERROR_OUTPUT


def _read_jsonl(f: Path) -> list[dict[str, Any]]:
    return [r for _, r in iter_records(f, text_field=None)]


def _is_judgment(rec: Mapping[str, Any]) -> bool:
    return ("score" in rec and "model" in rec) or "g1_winner" in rec


def read_judgments(paths: Sequence[str | Path]) -> tuple[list[dict[str, Any]], list[Path]]:
    """Records of JSONL files, and the files skipped. A folder stands for the judgment files under it: its *.jsonl
    files whose first record is a judgment (a benchmark folder also holds questions and answers)."""
    out: list[dict[str, Any]] = []
    skipped: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            out += _read_jsonl(p)
        elif p.is_dir():
            for f in sorted(p.rglob("*.jsonl")):
                recs = _read_jsonl(f)
                if recs and _is_judgment(recs[0]):
                    out += recs
                else:
                    skipped.append(f)
        else:
            raise DataError(f"{p}: no such file or folder")
    if not out:
        raise DataError(f"no judgments in {', '.join(map(str, paths))}")
    return out, skipped


def judgment_mode(records: Sequence[Mapping[str, Any]]) -> str:
    if all("score" in r and "model" in r for r in records):
        return "single"
    if all("g1_winner" in r and "model_1" in r and "model_2" in r for r in records):
        return "pairwise"
    raise DataError(
        "not FastChat judgments: need single records (model, score, turn) or pairwise records "
        "(model_1, model_2, g1_winner, g2_winner), not a mix"
    )


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def single_scores(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """model -> {n, turn_1, turn_2, overall, unparseable, errors}, models by overall mean, best first."""
    by_model: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in records:
        by_model[str(r["model"])].append(r)
    out = {}
    for model, recs in by_model.items():
        scored = [r for r in recs if r["score"] != -1]
        failed = [r for r in recs if r["score"] == -1]
        errors = sum(r.get("judgment") == ERROR_OUTPUT for r in failed)
        out[model] = {
            "n": len(recs),
            "turn_1": _mean([float(r["score"]) for r in scored if r.get("turn", 1) == 1]),
            "turn_2": _mean([float(r["score"]) for r in scored if r.get("turn", 1) == 2]),
            "overall": _mean([float(r["score"]) for r in scored]),
            "unparseable": len(failed) - errors,
            "errors": errors,
        }
    return dict(sorted(out.items(), key=lambda kv: -(kv[1]["overall"] or 0.0)))


def pairwise_scores(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """model -> {win, loss, tie, errors, win_rate, loss_rate, win_rate_adjusted}, by adjusted win rate."""
    tally: dict[str, dict[str, Any]] = defaultdict(lambda: {"win": 0, "loss": 0, "tie": 0, "errors": 0})
    for r in records:
        m1, m2, g1, g2 = str(r["model_1"]), str(r["model_2"]), r["g1_winner"], r["g2_winner"]
        if g1 == "error" or g2 == "error":
            tally[m1]["errors"] += 1
            tally[m2]["errors"] += 1
        elif g1 == "tie" or g1 != g2:
            tally[m1]["tie"] += 1
            tally[m2]["tie"] += 1
        else:
            winner, loser = (m1, m2) if g1 == "model_1" else (m2, m1)
            tally[winner]["win"] += 1
            tally[loser]["loss"] += 1
    for t in tally.values():
        n = t["win"] + t["loss"] + t["tie"]
        t["win_rate"] = t["win"] / n if n else None
        t["loss_rate"] = t["loss"] / n if n else None
        t["win_rate_adjusted"] = (t["win"] + 0.5 * t["tie"]) / n if n else None
    return dict(sorted(tally.items(), key=lambda kv: -(kv[1]["win_rate_adjusted"] or 0.0)))


def _fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def scores_table(mode: str, table: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """A Markdown table of `single_scores` or `pairwise_scores`."""
    if mode == "single":
        lines = [
            "| model | n | turn 1 | turn 2 | overall | unparseable | errors |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for m, s in table.items():
            means = " | ".join(_fmt(s[k]) for k in ("turn_1", "turn_2", "overall"))
            lines.append(f"| {m} | {s['n']} | {means} | {s['unparseable']} | {s['errors']} |")
        return lines
    lines = [
        "| model | win | loss | tie | errors | win rate | loss rate | adjusted win rate |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m, s in table.items():
        rates = " | ".join(_fmt(s[k], 3) for k in ("win_rate", "loss_rate", "win_rate_adjusted"))
        lines.append(f"| {m} | {s['win']} | {s['loss']} | {s['tie']} | {s['errors']} | {rates} |")
    return lines
