"""pfgen-bench tables: a result's headline numbers, and the published scores beside ours.

The headline is the leaderboard's: the score (mean over trials) ± its standard deviation, fluency and
truthfulness summed over the question's reference sets (so a reference answer scores about 1 on each, and the
ground truth about 1.05 overall), helpfulness, and the answers' mean length in characters.

On a subset of the questions (the repo's 7-question sample) a model's overall score is not comparable with a
published one over 50; the published rows are then recomputed from the published per-question scores over the
same questions (their standard deviation over trials cannot be, and shows as —), and the published 50-question
score is shown beside them. Both are labelled as published numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kamado.eval.pfgen.data import published_results


def headline(result: dict[str, Any]) -> dict[str, Any]:
    """The leaderboard's numbers of an (upstream-format) result."""
    s = result["scores"]
    return {
        "score": result["score"],
        "score_std": result["score_std"],
        "fluency": round(sum(s["fluency"].values()), 4),
        "truthfulness": round(sum(s["truthfulness"].values()), 4),
        "helpfulness": s["helpfulness"],
        "length": result["length"],
        "trials": result["num_trials"],
        "questions": len(result["questions"]),
    }


def subset_headline(result: dict[str, Any], question_ids: Sequence[str]) -> dict[str, Any]:
    """The headline over some questions only, from the per-question means (no standard deviation)."""
    qs = [result["questions"][q] for q in question_ids]

    def mean(values: list[float]) -> float:
        return round(sum(values) / len(values), 4)

    return {
        "score": mean([q["scores"]["average"] for q in qs]),
        "score_std": None,
        "fluency": mean([sum(q["scores"]["fluency"].values()) for q in qs]),
        "truthfulness": mean([sum(q["scores"]["truthfulness"].values()) for q in qs]),
        "helpfulness": mean([q["scores"]["helpfulness"] for q in qs]),
        "length": round(sum(q["length"] for q in qs) / len(qs), 1),
        "trials": result["num_trials"],
        "questions": len(qs),
    }


def published_rows(folder: Path, question_ids: Sequence[str]) -> list[dict[str, Any]]:
    """The published results shipped with the data: name, the headline over `question_ids` and over all 50."""
    rows = []
    for r in published_results(folder):
        name = str(r.get("config", {}).get("model", Path(r["path"]).parent.parent.name))
        subset = all(q in r["questions"] for q in question_ids) and len(question_ids) < len(r["questions"])
        rows.append(
            {
                "name": name,
                "path": r["path"],
                "full": headline(r),
                "same_questions": subset_headline(r, question_ids) if subset else headline(r),
            }
        )
    return sorted(rows, key=lambda row: row["full"]["score"])


def _row(name: str, h: dict[str, Any], note: str = "") -> str:
    std = "—" if h["score_std"] is None else f"{h['score_std']:.4f}"
    return (
        f"| {name} | {h['score']:.4f} | {std} | {h['fluency']:.3f} | {h['truthfulness']:.3f} | "
        f"{h['helpfulness']:.3f} | {h['length']:.1f} | {h['questions']} × {h['trials']} | {note} |"
    )


def pfgen_table(ours: dict[str, dict[str, Any]], published: list[dict[str, Any]]) -> list[str]:
    """Markdown: our models' headlines (name -> headline), then the published ones on the same questions."""
    lines = [
        "| model | score | ± std | fluency | truthfulness | helpfulness | length | questions × trials | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [_row(name, h) for name, h in ours.items()]
    for p in published:
        note = "published"
        if p["same_questions"]["questions"] != p["full"]["questions"]:
            note = f"published, same questions; over all 50: {p['full']['score']:.4f} ± {p['full']['score_std']:.4f}"
        lines.append(_row(p["name"], p["same_questions"], note))
    return lines
