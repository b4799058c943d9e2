"""pfgen prompts: pinned as text (files written once by upstream's own `pfgen.generate_task`), and — where the
shared copy of upstream is present — equal to upstream's construction for every question, mode and a few trials."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from kamado.eval.pfgen.data import PfgenData
from kamado.eval.pfgen.prompt import build_task, clean_answer, config_hash, generation_config, stop_sequences

REPO = Path(__file__).resolve().parents[3]
SAMPLE = REPO / "samples" / "eval" / "pfgen"
SHARED = REPO.parent / "shared" / "data" / "benchmarks" / "pfgen_bench"
PINNED = Path(__file__).parent / "pinned"
Q01 = "時計の長針と短針が1日に重なる回数は？"


def text_of(task) -> str:
    return task.text if task.mode != "chat" else f"[system]\n{task.system}\n[user]\n{task.user}"


@pytest.mark.parametrize("mode", ["completion", "qa", "chat"])
def test_prompt_pinned_against_upstream(mode):
    """Trial 1 of Q01, seed "": upstream's text (examples in SHA-1 order), seed 818176819 for the whole trial."""
    task = build_task(PfgenData(SAMPLE).examples(), Q01, mode, trial=1)
    assert text_of(task) == (PINNED / f"Q01_trial1_{mode}.txt").read_text(encoding="utf-8")
    assert task.seed == 818176819
    prompt = task.prompt(300, 1.0, 0.98)
    assert (prompt.text is None) == (mode != "completion")
    assert prompt.stop == (("Q:", "\n\n") if mode == "completion" else ("Q:",))
    assert (prompt.max_tokens, prompt.temperature, prompt.top_p, prompt.seed) == (300, 1.0, 0.98, 818176819)


def test_prompt_pinned_other_trial_seed_and_count():
    examples = PfgenData(SAMPLE).examples()
    task = build_task(examples, "Rubyについて教えて。", "completion", 7, num_examples=2, seed="kamado")
    assert task.text == (PINNED / "Q21_trial7_2examples_seed_kamado_completion.txt").read_text(encoding="utf-8")
    assert task.seed == 2020350780
    assert task.text.count("\nA: ") == 2 and task.text.endswith("Q: Rubyについて教えて。\nA:")


def test_answer_cleaning_and_config():
    assert clean_answer("  22回です。 ", "completion") == "22回です。"
    assert clean_answer("Q: 何？\nA: 22回です。", "chat") == "22回です。"
    assert clean_answer("A: x A: y", "completion") == "A: x A: y"
    config = generation_config("vllm", "llm-jp/llm-jp-3-150m", "completion")
    # upstream's published config.json for llm-jp-3-150m, and the folder name it was published under
    assert config == {
        "engine": "vllm", "max_tokens": 300, "mode": "completion", "model": "llm-jp/llm-jp-3-150m",
        "num_examples": 20, "stop": ["Q:", "\n\n"], "temperature": 1.0, "top_p": 0.98,
    }  # fmt: skip
    assert config_hash(config) == "c5abc69"
    assert stop_sequences("qa") == ("Q:",)


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data/benchmarks/pfgen_bench (upstream's pfgen.py)")
def test_prompts_equal_upstream_for_every_question_mode_and_trial():
    spec = importlib.util.spec_from_file_location("upstream_pfgen", SHARED / "reference" / "pfgen.py")
    assert spec and spec.loader
    upstream = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(upstream)
    examples = PfgenData(SHARED).examples()
    assert examples == upstream.get_questions()  # the shipped questions.jsonl is upstream's embedded list
    for q in examples:
        for mode in ("completion", "qa", "chat"):
            for trial, n, seed in ((1, 20, ""), (2, 20, ""), (100, 20, ""), (3, 5, "s")):
                ours = build_task(examples, q["question"], mode, trial, n, seed)
                theirs = upstream.generate_task(q, mode, trial, num_examples=n, seed=seed)
                assert ours.seed == theirs["seed"]
                if mode == "chat":
                    assert (ours.system, ours.user) == (theirs["system_prompt"], theirs["user_prompt"])
                else:
                    assert ours.text == theirs["prompt"]
