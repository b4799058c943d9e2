"""`kamado eval judge-scores`: FastChat show_result.py's numbers, checked on real GPT-4 judgments (ja-vicuna-qa's
pairwise files, in the shared folder) and on single-answer files, against computations written out here."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from kamado.cli import main


def scores_json(capsys, *paths: Path) -> dict:
    assert main(["eval", "judge-scores", *map(str, paths), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_pairwise_scores_of_real_gpt4_judgments(bench: Path, capsys) -> None:
    folder = bench / "ja_vicuna_qa" / "model_judgment" / "pairwise" / "gpt-4"
    got = scores_json(capsys, bench / "ja_vicuna_qa")  # the benchmark folder: its questions and answers skipped
    assert got["mode"] == "pairwise" and got["judgments"] == 480
    assert got["skipped_files"] and not any("model_judgment" in f for f in got["skipped_files"])

    # direct: per file, a record is a win only when both orders name the same model (show_result.py)
    expect: dict[str, Counter[str]] = {}
    for f in sorted(folder.glob("*.jsonl")):
        for line in f.read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            pair = (r["g1_winner"], r["g2_winner"])
            if "error" in pair:
                continue
            for side, name in (("model_1", r["model_1"]), ("model_2", r["model_2"])):
                c = expect.setdefault(name, Counter())
                c["win" if pair == (side, side) else "tie" if pair[0] != pair[1] or "tie" in pair else "loss"] += 1
    assert set(got["models"]) == set(expect)
    for name, c in expect.items():
        m, n = got["models"][name], c["win"] + c["loss"] + c["tie"]
        assert (m["win"], m["loss"], m["tie"]) == (c["win"], c["loss"], c["tie"])
        assert m["win_rate"] == pytest.approx(c["win"] / n)
        assert m["win_rate_adjusted"] == pytest.approx((c["win"] + c["tie"] / 2) / n)
    # pinned from the file itself: text-davinci-003 vs rinna-3.6b PPO, 80 questions: 60 agreed davinci wins,
    # 11 agreed rinna wins, 9 split or tied
    rinna = got["models"]["rinna--japanese-gpt-neox-3.6b-instruction-ppo"]
    assert (rinna["win"], rinna["loss"], rinna["tie"], rinna["errors"]) == (11, 60, 9, 0)
    davinci = got["models"]["openai--text-davinci-003"]  # in all six files
    assert davinci["win"] + davinci["loss"] + davinci["tie"] + davinci["errors"] == 480


def single_file(path: Path) -> Path:
    rows = [
        ("a", 1, 8), ("a", 1, 6), ("a", 2, 5), ("a", 2, -1), ("a", 1, -1),
        ("b", 1, 9.5), ("b", 2, 3), ("b", 2, 4),
    ]  # fmt: skip
    recs = [
        {"question_id": k, "model": m, "judge": ["gpt-4", "single-v1"], "user_prompt": "", "turn": t, "score": s,
         "judgment": "$ERROR$" if (s == -1 and t == 2) else "no rating here", "tstamp": 0.0}
        for k, (m, t, s) in enumerate(rows)
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in recs), encoding="utf-8")
    return path


def test_single_scores_leave_minus_one_out_of_the_means(tmp_path: Path, capsys) -> None:
    got = scores_json(capsys, single_file(tmp_path / "gpt-4_single.jsonl"))
    assert got["mode"] == "single" and got["judgments"] == 8
    a, b = got["models"]["a"], got["models"]["b"]
    assert (a["n"], a["turn_1"], a["turn_2"], a["unparseable"], a["errors"]) == (5, 7.0, 5.0, 1, 1)
    assert a["overall"] == pytest.approx((8 + 6 + 5) / 3)  # over judgments, not the mean of the turn means
    assert (b["n"], b["turn_1"], b["turn_2"], b["overall"]) == (3, 9.5, 3.5, pytest.approx(16.5 / 3))
    assert list(got["models"]) == ["a", "b"]  # best overall first
    assert main(["eval", "judge-scores", str(tmp_path / "gpt-4_single.jsonl")]) == 0
    assert "| a | 5 | 7.00 | 5.00 | 6.33 | 1 | 1 |" in capsys.readouterr().out


def test_judge_scores_of_our_own_run_match_its_report(tmp_path: Path, serve, capsys) -> None:
    from .conftest import good_judge, stub_answer

    answers, judge_srv = serve(stub_answer), serve(good_judge)
    argv = ["eval", "judge", "--endpoint", answers.url, "--model", "m", "--judge-url", judge_srv.url]
    argv += ["--judge-model", "j", "--bench", "mt_bench", "--limit", "2", "--out", str(tmp_path), "--no-progress"]
    assert main(argv) == 0
    capsys.readouterr()
    got = scores_json(capsys, tmp_path / "mt_bench" / "model_judgment" / "j_single.jsonl")
    report = json.loads((tmp_path / "mt_bench" / "report_m.json").read_text())
    assert got["models"]["m"]["overall"] == report["mean"] == 7.0
    assert (got["models"]["m"]["turn_1"], got["models"]["m"]["turn_2"]) == (8.0, 6.0)


def test_judge_scores_user_errors(tmp_path: Path, capsys) -> None:
    assert main(["eval", "judge-scores", str(tmp_path / "missing.jsonl")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["eval", "judge-scores", str(tmp_path)]) == 2
    assert "no judgments in" in capsys.readouterr().err
    (tmp_path / "bad.jsonl").write_text('{"question_id": 1}\n')
    assert main(["eval", "judge-scores", str(tmp_path / "bad.jsonl")]) == 2
    assert "not FastChat judgments" in capsys.readouterr().err
    (tmp_path / "torn.jsonl").write_text('{"model": "a", "score": 3, "tur')
    assert main(["eval", "judge-scores", str(tmp_path / "torn.jsonl")]) == 2
    assert "torn.jsonl:1: invalid JSON" in capsys.readouterr().err
