"""`kamado run recipes/tiny.toml` end to end on a shrunken model: every stage, the report, and resume after a kill."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kamado.corpus import report as corpus_report

ROOT = Path(__file__).resolve().parents[2]


def kamado_run(out_dir: Path, steps: int, shrink: list[str]) -> subprocess.Popen:
    """The tiny recipe with the sizes shrunk (`shrink_args`, tests/conftest.py)."""
    args = [sys.executable, "-m", "kamado.cli", "run", "recipes/tiny.toml", f"--out_dir={out_dir}"]
    env = {**os.environ, "COLUMNS": "100"}
    return subprocess.Popen(
        [*args, *shrink, "--train.eval_every=8", f"--train.steps={steps}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def losses(run: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


@pytest.mark.slow
def test_tiny_recipe_end_to_end_and_resume_after_kill(tmp_path, shrink_args, posttrain_args):
    shrink_args = shrink_args + posttrain_args  # every stage, post-training included
    full = tmp_path / "full"
    p = kamado_run(full, 24, shrink_args)
    out = p.communicate(timeout=600)[0].decode()
    assert p.returncode == 0, out
    for f in ("report.md", "loss.png", "summary.json", "metrics.jsonl", "tokenizer/tokenizer.json", "config.json"):
        assert (full / f).is_file(), f
    assert list((full / "tensorboard").glob("events.out.tfevents.*"))
    summary = json.loads((full / "summary.json").read_text())
    assert set(summary["stage_seconds"]) >= {"web corpus", "tokenizer", "shards", "pretrain", "bits/char vs xz"}
    # the recipe starts from the WARC sample: its web corpus is a training source with its own shards
    assert summary["web_corpus"]["documents_out"] >= 10
    assert (full / "corpus" / "corpus_funnel.png").is_file() and (full / "data" / "ja_web" / "manifest.json").is_file()
    funnel = dict(corpus_report.funnel(summary["web_corpus"]))
    assert funnel["quality classifier"] < funnel["quality filters"]  # the classifier dropped documents
    assert "| 🧮 Quality classifier | low_quality_score |" in (full / "corpus" / "corpus_report.md").read_text()
    assert any(name == "ja_web" for name, _ in summary["data_rows"])
    bpc = summary["bits_per_char"]
    assert {k.split()[0] for k in bpc} == {"ja", "en"}
    assert all(0 < r["model"] < 20 and 0 < r["xz"] < 20 for r in bpc.values())
    assert len(summary["samples"]) == 3
    # the serving stages: the engine's batch, and the exports checked against stock transformers
    assert {"generate", "export"} <= set(summary["stage_seconds"])
    rows = dict(summary["serve_rows"])
    assert "identical" in rows["transformers vs kamado"], rows
    assert float(rows["transformers vs kamado"].split("largest logit difference ")[1].split()[0]) < 1e-4
    assert (full / "export" / "hf" / "config.json").is_file() and (full / "export" / "model.gguf").is_file()
    report = (full / "report.md").read_text()
    assert "bits per character" in report and "loss.png" in report and "## Web corpus" in report
    # post-training: SFT -> 2 DPO rounds -> merge -> the held-out table, each stage a run folder that loads
    assert {"sft", "dpo", "merge", "post-training eval"} <= set(summary["stage_seconds"])
    post = summary["posttrain"]
    assert post["sft"]["step"] == 4 and post["sft"]["data"]["conversations"] == 30
    assert [r["round"] for r in post["dpo"]] == [1, 2]
    assert all(r["pairs"]["on_policy"] + r["pairs"]["off_policy"] >= 1 for r in post["dpo"])
    names = list(post["heldout"])
    assert names[:4] == ["pre-trained", "SFT", "DPO round 1", "DPO round 2"] and names[4].startswith("merged (slerp")
    for rows in post["heldout"].values():
        assert rows[0]["task"] == "compare" and rows[0]["n"] == 5 and rows[0]["chance"] == 0.5
    for stage in ("sft", "dpo/round_1", "dpo/round_2", "merged"):
        assert (full / stage / "tokenizer" / "tokenizer.json").is_file(), stage
    assert "## Post-training" in report and "| compare | exact_match | 5 |" in report
    # jaster on every model: the pre-trained one with v1.3's plain prompt, the post-trained ones with chat turns
    jaster = summary["jaster"]["reports"]
    assert list(jaster) == names and "jaster" in summary["stage_seconds"]
    assert [r["settings"]["prompt"] for r in jaster.values()] == ["alpaca"] + ["chat"] * 4
    for r in jaster.values():  # 2 samples of each of the 12 tasks; no v1.3 prompt fits the shrunken 64 tokens
        assert r["examples"] == 24 and r["too_long"] == 24 and len(r["tasks"]) == 12
    assert (full / "eval" / "jaster" / "dpo_round_2" / "jsquad.jsonl").is_file()
    assert "## jaster (llm-jp-eval v1.3 semantics)" in report and (full / "jaster_compare.png").is_file()
    # the judge benchmarks: the post-trained models, judged offline by the last one behind a local server
    judged = summary["judge"]["reports"]
    assert list(judged) == names[1:] and "judge" in summary["stage_seconds"]
    assert all(set(r) == {"ja_mt_bench", "rakuda"} for r in judged.values())
    assert (full / "eval" / "judge" / "rakuda" / "model_answer" / "SFT.jsonl").is_file()
    assert "## Judge benchmarks (Japanese MT-Bench, Rakuda)" in report
    seq = losses(full)
    assert sorted(seq) == list(range(1, 25))
    phases = [json.loads(x).get("phase") for x in (full / "metrics.jsonl").read_text().splitlines()]
    assert {0, 1} <= set(phases)  # the second data phase started at 4096 tokens (step 16)

    # kill -9 in the middle of training, then run the same command again
    killed = tmp_path / "killed"
    p = kamado_run(killed, 24, shrink_args)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "step_00000012").is_dir():
        assert time.time() < deadline and p.poll() is None
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    p = kamado_run(killed, 24, shrink_args)
    out = p.communicate(timeout=600)[0].decode()
    assert p.returncode == 0, out
    assert losses(killed) == seq  # identical loss sequence to the uninterrupted run
    assert json.loads((killed / "summary.json").read_text())["bits_per_char"] == bpc
