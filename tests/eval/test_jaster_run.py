"""The jaster runner: prompts pinned as text, v1.3's scoring of whole tasks, category means, resume, and the CLI.

Everything here runs from the repo alone: the shipped cut of jaster in v1.3's layout (samples/eval/jaster) and a
scripted generator whose answers the test chooses; the local-model and endpoint generators have their own tests
(test_generate.py).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import pytest

from kamado.cli import main
from kamado.errors import DataError
from kamado.eval.generate import Completion, Prompt
from kamado.eval.jaster import TASK_NAMES
from kamado.eval.jaster.run import MISSING, JasterSettings, evaluate_jaster, score_answers, task_prompts
from kamado.eval.jaster.v13_format import available_tasks, read_v13_dataset, write_v13_dataset

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "eval" / "jaster"
PINNED = Path(__file__).parent / "pinned_prompts"


class Scripted:
    """A Generator answering each prompt with `answer(prompt)`; it records every prompt it is asked."""

    def __init__(self, answer, name: str = "scripted") -> None:
        self.answer, self.name, self.asked = answer, name, []

    def generate(self, prompts: Sequence[Prompt], desc: str = "") -> list[Completion]:
        self.asked += list(prompts)
        out = []
        for p in prompts:
            a = self.answer(p, desc)
            out.append(a if isinstance(a, Completion) else Completion(a, "stop"))
        return out


def load(name: str):
    return read_v13_dataset(SAMPLES, name)


def gold_of(prompt: Prompt, task: str = "") -> str:
    """The gold answer of the sample a prompt asks about (found by its input in the shipped test split)."""
    for name in TASK_NAMES:
        for s in load(name).test:
            text = prompt.text if prompt.text is not None else prompt.messages[-1]["content"]
            if text.endswith(s.input + "\n\n### 応答:\n") or text == s.input:
                return s.output
    raise AssertionError("prompt of no known sample")


def test_the_shipped_cut_has_every_task_and_reads_back() -> None:
    assert available_tasks(SAMPLES) == TASK_NAMES
    for name in TASK_NAMES:
        data = load(name)
        assert len(data.test) == 20
        assert len(data.train) == (0 if name in ("jnli", "jsquad") else 4)  # no train split offline for those two


@pytest.mark.parametrize("name", TASK_NAMES)
@pytest.mark.parametrize("shots", [0, 4])
def test_prompts_are_pinned_as_text(name: str, shots: int) -> None:
    """The exact v1.3 prompt text of each task's first test sample, 0- and 4-shot (files reviewed by hand)."""
    prompts, used = task_prompts(load(name), JasterSettings(shots=shots, limit=1))
    pinned = (PINNED / f"{name}_{shots}shot.txt").read_text(encoding="utf-8")
    assert prompts[0].text == pinned
    assert prompts[0].max_tokens == load(name).task.output_length
    assert used == (0 if name in ("jnli", "jsquad") else shots)


def test_chat_prompts_carry_the_same_blocks_as_turns() -> None:
    data = load("jamp")
    (p,), _ = task_prompts(data, JasterSettings(shots=2, limit=1, prompt="chat"))
    roles = [m["role"] for m in p.messages]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
    assert p.messages[-1]["content"] == data.test[0].input
    assert p.messages[2]["content"] == data.train[0].output
    assert data.task.instruction in p.messages[0]["content"]


def test_scores_are_v13s_after_normalisation() -> None:
    # exact match after the first blank line is cut and NFKC (full-width letters → ASCII) on both sides
    scores, each = score_answers(
        ("exact_match",), ["ｅｎｔａｉｌｍｅｎｔ\n\nbecause…", " entailment", "neutral"], ["entailment"] * 3
    )
    assert each == [1.0, 0.0, 0.0] and scores == {"exact_match": pytest.approx(1 / 3)}
    # char F1: "東京都" vs "東京" = 0.8 (LCS 2 of 3 + 2), punctuation and order do not matter
    scores, each = score_answers(("char_f1",), ["東京都", "大阪、東京"], ["東京", "東京 大阪"])
    assert each == [0.8, 1.0] and scores["char_f1"] == pytest.approx(0.9)
    # JSTS: correlations over the set; a non-number reads as -2.0 (v1.3)
    golds = ["1.0", "2.0", "3.0", "4.0"]
    scores, _ = score_answers(("pearson", "spearman"), ["1.0", "2.0", "3.0", "4.0"], golds)
    assert scores == {"pearson": pytest.approx(1.0), "spearman": pytest.approx(1.0)}
    scores, _ = score_answers(("pearson", "spearman"), ["4", "3", "2", "1"], golds)
    assert scores == {"pearson": pytest.approx(-1.0), "spearman": pytest.approx(-1.0)}


def test_a_perfect_model_scores_one_everywhere_and_the_mean_leaves_jsts_out(tmp_path: Path) -> None:
    report = evaluate_jaster(Scripted(gold_of), load, TASK_NAMES, JasterSettings(limit=5), tmp_path)
    assert all(t["score"] == 1.0 for t in report["tasks"].values()), report["tasks"]
    assert report["categories"] == dict.fromkeys(("NLI", "QA", "RC", "MC", "HE", "MR"), 1.0)
    assert report["mean"] == 1.0 and "STS" not in report["mean_over"]
    assert report["sts"]["pearson"] == pytest.approx(1.0)
    assert {m["task"] for m in report["missing"]} == set(MISSING)
    assert report["examples"] == 5 * len(TASK_NAMES)
    lines = (tmp_path / "jamp.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 5 and json.loads(lines[0])["score"] == 1.0


def test_category_means_are_means_of_their_tasks(tmp_path: Path) -> None:
    right = {"jamp", "janli", "jnli"}  # 3 of the 5 NLI tasks right, everything else wrong

    def answer(p: Prompt, task: str) -> str:
        return gold_of(p) if task in right else "×"

    tasks = ("jamp", "janli", "jnli", "jsem", "jsick", "niilc", "mawps")
    report = evaluate_jaster(Scripted(answer), load, tasks, JasterSettings(limit=4), tmp_path)
    assert report["categories"]["NLI"] == pytest.approx(3 / 5)
    assert report["categories"]["MR"] == 0.0 and report["categories"]["QA"] == 0.0
    assert report["mean"] == pytest.approx((3 / 5 + 0 + 0) / 3)
    assert report["mean_over"] == ["NLI", "QA", "MR"]


def test_too_long_and_errors_are_counted_and_scored_wrong(tmp_path: Path) -> None:
    calls = iter(range(1000))

    def answer(p: Prompt, task: str) -> Completion:
        i = next(calls)
        if i % 3 == 0:
            return Completion("", "too_long")
        if i % 3 == 1:
            return Completion("", "error", "HTTP 500")
        return Completion(gold_of(p), "stop")

    report = evaluate_jaster(Scripted(answer), load, ("jamp",), JasterSettings(limit=6), tmp_path)
    t = report["tasks"]["jamp"]
    assert (t["too_long"], t["errors"], t["n"]) == (2, 2, 6) and t["score"] == pytest.approx(2 / 6)
    records = [json.loads(x) for x in (tmp_path / "jamp.jsonl").read_text().splitlines()]
    assert [r["finish_reason"] for r in records][:3] == ["too_long", "error", "stop"]
    assert records[1]["error"] == "HTTP 500"


def test_a_rerun_reuses_finished_tasks_unless_the_settings_change(tmp_path: Path) -> None:
    first = Scripted(gold_of)
    evaluate_jaster(first, load, ("jamp", "mawps"), JasterSettings(limit=3), tmp_path)
    assert len(first.asked) == 6
    (tmp_path / "mawps.json").unlink()  # as if killed before mawps finished
    again = Scripted(gold_of)
    report = evaluate_jaster(again, load, ("jamp", "mawps"), JasterSettings(limit=3), tmp_path)
    assert len(again.asked) == 3 and report["tasks"]["jamp"]["score"] == 1.0
    other = Scripted(gold_of)
    evaluate_jaster(other, load, ("jamp", "mawps"), JasterSettings(limit=3, shots=4), tmp_path)
    assert len(other.asked) == 6


def test_v13_layout_refuses_another_tasks_definition(tmp_path: Path) -> None:
    for split in ("train", "test"):
        (tmp_path / split).mkdir()
        src = json.loads((SAMPLES / split / "jamp.json").read_text(encoding="utf-8"))
        src["instruction"] = "something else"
        (tmp_path / split / "jamp.json").write_text(json.dumps(src), encoding="utf-8")
    with pytest.raises(DataError, match=r"not v1\.3's for jamp"):
        read_v13_dataset(tmp_path, "jamp")
    (tmp_path / "test" / "jamp.json").write_text("{", encoding="utf-8")
    with pytest.raises(DataError, match=r"jamp\.json"):
        read_v13_dataset(tmp_path, "jamp")


def test_prepare_round_trips_the_raw_files(bench: Path, tmp_path: Path) -> None:
    from kamado.eval.jaster import load_task

    write_v13_dataset(bench, tmp_path, ("jemhopqa", "jsts"), {"train": 10, "test": None})
    for name in ("jemhopqa", "jsts"):
        raw, back = load_task(name, bench), read_v13_dataset(tmp_path, name)
        assert back.train == raw.train[:10] and back.test == raw.test and back.dev == raw.dev


def test_cli_two_models_and_bad_input(eval_run: Path, tmp_path: Path, capsys) -> None:
    run = eval_run
    out = tmp_path / "eval"
    args = ["eval", "jaster", f"a={run}", f"b={run}", "--tasks", "jamp", "jsts", "--limit", "2", "--no-progress"]
    assert main([*args, "--data", str(SAMPLES), "--out", str(out)]) == 0
    for name in ("a", "b"):
        report = json.loads((out / name / "jaster.json").read_text(encoding="utf-8"))
        assert report["examples"] == 4 and set(report["tasks"]) == {"jamp", "jsts"}
        assert report["too_long"] == 0  # the prompts fit the context: real answers from the engine
        answers = [json.loads(x) for x in (out / name / "jamp.jsonl").read_text(encoding="utf-8").splitlines()]
        assert all(a["finish_reason"] in ("stop", "length") and a["output"] for a in answers)
        assert (out / name / "jaster.md").read_text(encoding="utf-8").startswith("jaster (llm-jp-eval v1.3")
    assert (out / "jaster_compare.png").stat().st_size > 1000
    assert "| a |" in (out / "compare.md").read_text(encoding="utf-8")
    capsys.readouterr()
    assert main(["eval", "jaster", str(run), "--tasks", "chabsa", "--data", str(SAMPLES), "--out", str(out)]) == 2
    assert "chabsa not in" in capsys.readouterr().err
    assert main(["eval", "jaster", str(run), "--shots", "-1", "--data", str(SAMPLES), "--out", str(out)]) == 2
    assert main(["eval", "jaster", "--data", str(SAMPLES), "--out", str(out)]) == 2
    assert main(["eval", "jaster", str(run), "--data", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert not math.isnan(report["tasks"]["jsts"]["scores"]["pearson"])


def test_cli_through_an_endpoint_of_kamado_serve(eval_run: Path, tmp_path: Path) -> None:
    """Another model through an OpenAI-compatible endpoint: here a real `kamado serve` of the test model."""
    from kamado.serve.background import serve_in_background

    with serve_in_background(eval_run) as (url, name):
        for prompt in ("chat", "alpaca"):  # /v1/chat/completions and /v1/completions
            out = tmp_path / prompt
            args = ["eval", "jaster", "--endpoint", url, "--model", name, "--prompt", prompt, "--no-progress"]
            assert (
                main([*args, "--tasks", "jamp", "niilc", "--limit", "3", "--data", str(SAMPLES), "--out", str(out)])
                == 0
            )
            report = json.loads((out / name / "jaster.json").read_text(encoding="utf-8"))
            assert report["examples"] == 6 and report["errors"] == 0 and report["model"] == name
            answers = [json.loads(x) for x in (out / name / "niilc.jsonl").read_text(encoding="utf-8").splitlines()]
            assert all(a["output"] for a in answers)
