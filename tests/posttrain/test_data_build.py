"""Post-training data: jaster SFT/prompt/test files and Japanese Vicuna QA preference pairs.

The full build runs on the real benchmark files in ../shared/data/benchmarks (skipped without them); the pair
rules run on a small hand-made judgment folder, and the shipped sample (samples/posttrain) is checked anywhere.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from kamado.data.jsonl import iter_records
from kamado.errors import DataError
from kamado.eval.jaster import TASK_NAMES, TASKS, load_task
from kamado.eval.jaster.metrics import sample_score
from kamado.eval.jaster.prompt import system_message
from kamado.posttrain.commands_data import add_posttrain_data_parser
from kamado.posttrain.data_build import build_posttrain_data, read_vicuna_pairs

REPO = Path(__file__).parents[2]
BENCHMARKS = (REPO / "../shared/data/benchmarks").resolve()
SAMPLE = REPO / "samples" / "posttrain"
FILES = ("sft.jsonl", "prompts.jsonl", "test.jsonl", "pairs.jsonl")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Through kamado's own JSONL reader, as the SFT and DPO stages read these files (.jsonl or .jsonl.gz)."""
    return [record for _, record in iter_records(path, text_field=None)]


@pytest.fixture(scope="module")
def full(bench: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("posttrain_full")
    return out, build_posttrain_data(bench, out)


@pytest.fixture(scope="module")
def tasks(bench: Path) -> dict[str, Any]:
    return {name: load_task(name, bench) for name in TASK_NAMES}


def test_full_build_writes_every_train_sample_and_every_test_sample(full, tasks) -> None:
    out, card = full
    sft, prompts, test = (read_jsonl(out / f) for f in FILES[:3])
    assert Counter(r["task"] for r in sft) == {n: len(d.train) for n, d in tasks.items() if d.train}
    assert Counter(r["task"] for r in test) == {n: len(d.test) for n, d in tasks.items()}
    assert [r["answer"] for r in prompts] == [r["answer"] for r in sft]
    assert {"jnli", "jsquad"} & {r["task"] for r in sft} == set()  # no train split offline
    for name, data in tasks.items():
        entry = card["tasks"][name]
        assert entry["available"] == {"train": len(data.train), "dev": len(data.dev), "test": len(data.test)}
        assert entry["dropped"] == dict(data.dropped)
    assert card["tasks"]["jsick"]["licence"] == "CC BY-SA 4.0" and card["tasks"]["jsem"]["licence"] == "BSD-3-Clause"
    assert card["tasks"]["jamp"]["upstream"] == "tomo-ut/temporalNLI_dataset @ f578b5d"
    assert {f: v["lines"] for f, v in card["files"].items()} == {
        "sft.jsonl": len(sft),
        "prompts.jsonl": len(prompts),
        "test.jsonl": len(test),
        "pairs.jsonl": card["pairs"]["kept"],
    }


def test_no_dev_or_test_sample_is_in_sft_or_prompts(full, tasks) -> None:
    out, _ = full
    held = {s.input for d in tasks.values() for s in d.dev + d.test}
    for name in ("sft.jsonl", "prompts.jsonl"):
        trained = {m["content"] for r in read_jsonl(out / name) for m in r["messages"] if m["role"] == "user"}
        assert len(trained) > 50_000 and not trained & held, name
    test_inputs = {r["messages"][-1]["content"] for r in read_jsonl(out / "test.jsonl")}
    assert test_inputs <= {s.input for d in tasks.values() for s in d.test}


def test_records_have_the_v13_prompt_and_a_scorable_answer(full) -> None:
    out, _ = full
    for r in read_jsonl(out / "sft.jsonl")[::97]:
        task = TASKS[r["task"]]
        roles = [m["role"] for m in r["messages"]]
        assert roles == ["system", "user", "assistant"]
        assert r["messages"][0]["content"] == system_message(task)
        assert r["messages"][2]["content"] == r["answer"] and r["answer"].strip()
    for r in read_jsonl(out / "test.jsonl")[::29] + read_jsonl(out / "prompts.jsonl")[::97]:
        task = TASKS[r["task"]]
        assert [m["role"] for m in r["messages"]] == ["system", "user"]
        assert r["label_list"] == list(task.label_list) and r["metric"] == task.metrics[0]
        assert not task.label_list or r["answer"] in task.label_list
        assert sample_score(r["metric"], r["answer"], r["answer"]) == 1.0


def _judgment_outcomes(bench: Path) -> Counter[str]:
    """The verdict classes counted straight from the judgment files, independently of data_build."""
    out: Counter[str] = Counter()
    for path in sorted(bench.glob("ja_vicuna_qa/model_judgment/pairwise/*/*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            g1, g2 = (json.loads(line)[k] for k in ("g1_winner", "g2_winner"))
            out["tie" if g1 == g2 == "tie" else "kept" if g1 == g2 else "inconsistent"] += 1
    return out


def test_vicuna_pairs_add_up_and_come_from_the_real_answers(full, bench) -> None:
    out, card = full
    report, pairs = card["pairs"], read_jsonl(out / "pairs.jsonl")
    expected = _judgment_outcomes(bench)
    assert report["judgments"] == sum(expected.values()) == 480
    assert report["kept"] == len(pairs) == expected["kept"]
    assert report["dropped"] == {
        "inconsistent verdicts between the two answer orders": expected["inconsistent"],
        "tie": expected["tie"],
    }
    assert report["kept"] + sum(report["dropped"].values()) == report["judgments"]
    answers = {}
    for path in bench.glob("ja_vicuna_qa/model_answer/*/results.jsonl"):
        for a in read_jsonl(path):
            answers[(a["model_id"], a["question_id"])] = a["choices"][0]["turns"][0].strip()
    questions = {q["question_id"]: q["turns"][0] for q in read_jsonl(bench / "ja_vicuna_qa/question.jsonl")}
    for p in pairs:
        winner, loser = p["models"]
        assert p["chosen"] == answers[(winner, p["question_id"])]
        assert p["rejected"] == answers[(loser, p["question_id"])]
        assert p["prompt"] == [{"role": "user", "content": questions[p["question_id"]]}]
        assert p["source"] == "ja_vicuna_qa" and p["judge"] == "gpt-4"
    # the judgment file's first line: GPT-4 preferred calm2 (model_1) in both orders on question 1
    first = next(p for p in pairs if p["question_id"] == 1 and "cyberagent--calm2-7b-chat" in p["models"])
    assert first["models"] == ["cyberagent--calm2-7b-chat", "openai--text-davinci-003"]


def test_data_card_states_the_rules(full) -> None:
    out, card = full
    text = (out / "DATA_CARD.md").read_text(encoding="utf-8")
    assert "dev and test splits never enter training" in text
    assert "do not use it to evaluate a model trained on these pairs" in text
    assert "| jsquad | RC | char_f1 | 0 | 0 | 4442 | 0 | 0 | 4442 | CC BY-SA 4.0 |" in text
    assert json.loads((out / "data_card.json").read_text(encoding="utf-8")) == card
    assert not list(out.glob("*.tmp"))  # every write went through a rename


def test_limits_are_a_seeded_draw_in_task_order(bench, tasks, tmp_path) -> None:
    a = build_posttrain_data(bench, tmp_path / "a", per_task_limit=5, seed=1, test_limit=3)
    build_posttrain_data(bench, tmp_path / "b", per_task_limit=5, seed=1, test_limit=3)
    c = build_posttrain_data(bench, tmp_path / "c", per_task_limit=5, seed=2, test_limit=3, compress=True)
    assert (tmp_path / "a/sft.jsonl").read_bytes() == (tmp_path / "b/sft.jsonl").read_bytes()
    sft, other = read_jsonl(tmp_path / "a/sft.jsonl"), read_jsonl(tmp_path / "c/sft.jsonl.gz")
    assert a["files"]["sft.jsonl"]["lines"] == c["files"]["sft.jsonl.gz"]["lines"] == len(other)
    assert {r["messages"][1]["content"] for r in sft} != {r["messages"][1]["content"] for r in other}  # seed
    assert Counter(r["task"] for r in sft) == {n: min(5, len(d.train)) for n, d in tasks.items() if d.train}
    order = {s.input: i for i, s in enumerate(tasks["jsick"].train)}
    picked = [order[r["messages"][1]["content"]] for r in sft if r["task"] == "jsick"]
    assert picked == sorted(picked)
    assert Counter(r["task"] for r in read_jsonl(tmp_path / "a/test.jsonl")) == dict.fromkeys(TASK_NAMES, 3)
    with pytest.raises(ValueError, match="per_task_limit must be at least 1"):
        build_posttrain_data(bench, tmp_path / "d", per_task_limit=0)


def test_missing_sources_md_is_a_data_error(tmp_path) -> None:
    with pytest.raises(DataError, match=r"SOURCES\.md: file not found"):
        build_posttrain_data(tmp_path, tmp_path / "out")


def test_the_cli_command(bench, tmp_path, capsys) -> None:
    parser = argparse.ArgumentParser(prog="kamado")
    add_posttrain_data_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["posttrain-data", "--benchmarks", str(bench), "--out", str(tmp_path), "--per-task-limit", "2"]
    )
    args.fn(args, [])
    printed = capsys.readouterr().out
    assert f"wrote {tmp_path}/sft.jsonl: 20 lines" in printed  # the 10 tasks with a train split, 2 each
    assert "pairs: 426 kept of 480 judgments" in printed
    with pytest.raises(SystemExit):
        parser.parse_args(["posttrain-data", "--benchmarks", "b", "--out", "o", "--per-task-limit", "0"])


# ---------------------------------------------------------------------------------------------------------------
# Pair rules on a hand-made judgment folder (no shared data needed).


def _write_jsonl(path: Path, lines: list[Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x, ensure_ascii=False)) + "\n" for x in lines))


def _judgment(qid: int, g1: Any, g2: Any = "absent", **extra: Any) -> dict[str, Any]:
    rec = {"question_id": qid, "model_1": "m1", "model_2": "m2", "g1_winner": g1, "judge_model": "gpt-4", **extra}
    if g2 != "absent":
        rec["g2_winner"] = g2
    return rec


def test_pair_rules_count_every_judgment(tmp_path: Path) -> None:
    base = tmp_path / "ja_vicuna_qa"
    questions = [{"question_id": q, "turns": [f"質問{q}" + "\n" * (q == 1)]} for q in range(1, 6)]
    _write_jsonl(base / "question.jsonl", questions)
    answers = {"m1": {1: "A1", 2: "A2", 3: "  ", 4: "A4"}, "m2": {1: " B1\n", 2: "B2", 3: "B3", 4: "B4"}}
    for model, by_q in answers.items():
        recs = [{"question_id": q, "model_id": model, "choices": [{"turns": [t]}]} for q, t in by_q.items()]
        _write_jsonl(base / f"model_answer/{model}/results.jsonl", [*recs, "{not json"])
    _write_jsonl(
        base / "model_judgment/pairwise/gpt-4/pairwise__m1_m2.jsonl",
        [
            _judgment(1, "model_2", "model_2", answer_2=" B1\n"),  # kept: m2 wins in both orders
            _judgment(2, "model_1"),  # kept: one order judged
            _judgment(2, "tie", "tie"),
            _judgment(2, "model_1", "model_2"),  # inconsistent
            _judgment(2, "tie", "model_1"),  # inconsistent: a tie in one order only
            _judgment(2, "error", "model_1"),  # unparseable
            _judgment(2, "model_1", None),  # unparseable
            _judgment(3, "model_2", "model_2"),  # m1's answer is blank
            _judgment(5, "model_1", "model_1"),  # no answers to question 5
            _judgment(4, "model_1", "model_1", question="別の質問"),  # not the question it claims
            _judgment(4, "model_1", "model_1", answer_1="another text"),  # not the answer it judged
            {"question_id": 4, "model_1": "m1", "g1_winner": "model_1"},  # no model_2
            "[1, 2]",
            "",  # blank lines are not judgments
        ],
    )
    pairs, report = read_vicuna_pairs(tmp_path)
    assert report["dropped"] == {
        "answer not in model_answer/": 1,
        "empty question or answer": 1,
        "inconsistent verdicts between the two answer orders": 2,
        "judged answer differs from model_answer/": 1,
        "judged question differs from question.jsonl": 1,
        "judgment without question_id, model_1, model_2 or g1_winner": 1,
        "not a JSON object": 1,
        "tie": 1,
        "unparseable verdict": 2,
    }
    assert report["kept"] == 2 and report["judgments"] == 13 == report["kept"] + sum(report["dropped"].values())
    assert report["bad_lines_in_questions_and_answers"] == {
        "model_answer/m1/results.jsonl: not a JSON object": 1,
        "model_answer/m2/results.jsonl: not a JSON object": 1,
    }
    assert pairs[0] == {
        "prompt": [{"role": "user", "content": "質問1\n"}],  # the question verbatim
        "chosen": "B1",  # stripped
        "rejected": "A1",
        "source": "ja_vicuna_qa",
        "question_id": 1,
        "models": ["m2", "m1"],
        "judge": "gpt-4",
    }
    assert (pairs[1]["chosen"], pairs[1]["models"]) == ("A2", ["m1", "m2"])
    excluded, report = read_vicuna_pairs(tmp_path, exclude_models={"m2"})
    assert excluded == [] and report["dropped"]["a model excluded by the build options"] == 2


# ---------------------------------------------------------------------------------------------------------------
# The shipped sample: what the tiny recipe trains on in a clone without ../shared.


def test_shipped_sample_is_small_consistent_and_clean() -> None:
    card = json.loads((SAMPLE / "data_card.json").read_text(encoding="utf-8"))
    assert sum(p.stat().st_size for p in SAMPLE.iterdir()) < 2_000_000
    for name in FILES:
        blob = (SAMPLE / name).read_bytes()
        assert card["files"][name]["sha256"] == hashlib.sha256(blob).hexdigest(), f"{name} is stale: rebuild it"
    sft, prompts, test, pairs = (read_jsonl(SAMPLE / f) for f in FILES)
    assert max(Counter(r["task"] for r in sft).values()) == 40
    assert Counter(r["task"] for r in test) == dict.fromkeys(TASK_NAMES, 30)
    test_inputs = {r["messages"][-1]["content"] for r in test}
    trained = {r["messages"][1]["content"] for r in sft + prompts}
    assert trained and test_inputs and not trained & test_inputs
    for r in sft:
        assert [m["role"] for m in r["messages"]] == ["system", "user", "assistant"]
        assert r["messages"][0]["content"] == system_message(TASKS[r["task"]])
    for r in test + prompts:
        assert sample_score(r["metric"], r["answer"], r["answer"]) == 1.0
        assert not r["label_list"] or r["answer"] in r["label_list"]
    assert len(pairs) == card["pairs"]["kept"] > 300
    assert all(p["chosen"] != p["rejected"] and p["models"][0] != p["models"][1] for p in pairs)
    assert not any("Swallow" in m for p in pairs for m in p["models"])  # Llama 2 outputs are not shipped


def test_shipped_sample_rebuilds_byte_for_byte(bench, tmp_path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("bps", REPO / "samples" / "build_posttrain_samples.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    build_posttrain_data(
        bench,
        tmp_path,
        per_task_limit=script.SFT_PER_TASK,
        seed=0,
        test_limit=script.TEST_PER_TASK,
        exclude_pair_models=script.EXCLUDED_PAIR_MODELS,
    )
    for name in (*FILES, "DATA_CARD.md", "data_card.json"):
        assert (tmp_path / name).read_bytes() == (SAMPLE / name).read_bytes(), name
    assert script.forbids_derivatives("CC BY-NC-ND 4.0") and script.forbids_derivatives("CC BY-ND 4.0")
    assert not any(script.forbids_derivatives(x) for x in ("CC BY-SA 4.0", "BSD-3-Clause", "Apache-2.0"))
