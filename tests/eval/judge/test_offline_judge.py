"""The judge flow with no external service at all: the tiny evaluation model answers through the serving engine and
`kamado serve` of the same run judges (`--judge-run`), as the tiny recipe does. Its ratings are noise; the test
checks that every step ran and that every judgment is accounted for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kamado.cli import main


@pytest.mark.slow
def test_a_local_model_served_in_the_background_is_the_judge(eval_run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "judge"
    argv = ["eval", "judge", str(eval_run), "--judge-run", str(eval_run), "--bench", "mt_bench", "--bench", "rakuda"]
    argv += ["--limit", "1", "--max-tokens", "8", "--judge-max-tokens", "8", "--rakuda-references", "claude-2"]
    argv += ["--bootstrap", "10", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "judge calls made: 4" in printed  # mt_bench: 2 turns; rakuda: 1 question x 1 reference x 2 orders

    name = eval_run.name
    answers = [json.loads(x) for x in (out / "mt_bench" / "model_answer" / f"{name}.jsonl").read_text().splitlines()]
    assert len(answers) == 1 and len(answers[0]["choices"][0]["turns"]) == 2 and answers[0]["model_id"] == name
    single = json.loads((out / "mt_bench" / f"report_{name}.json").read_text())
    assert single["judgments"] == 2 and single["errors"] == 0  # every call answered by the local judge
    assert single["scored"] + single["unparseable"] == 2
    rakuda = json.loads((out / "rakuda" / f"report_{name}.json").read_text())
    assert rakuda["judgments"] == 2 and rakuda["errors"] == 0 and rakuda["scored"] + rakuda["unparseable"] == 2
    judge_model = json.loads((out / "mt_bench" / "model_judgment" / f"{name}_single.jsonl").read_text().splitlines()[0])
    assert judge_model["judge"] == [name, "single-v1"]  # the served model's name is the judge's

    assert main(argv) == 0  # the rerun: nothing generated, nothing judged
    assert "judge calls made: 0" in capsys.readouterr().out
