"""`kamado experiment dpo-mix`: the summary is the hand-worked one, and the quick experiment's runs, page and figures
agree with each other; a rerun skips finished runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kamado.experiments.dpo_mix_report import summarise, table_lines

ROOT = Path(__file__).resolve().parents[2]


def _run(fraction, seed, scores, on, off, dropped=0, acc=1.0):
    """A result.json as run_one writes it: held-out rows per task, then their mean."""
    rows = [{"task": t, "score": s} for t, s in scores.items()]
    mean = sum(scores.values()) / len(scores)
    last = {"loss": 0.5, "reward_margin": 1.0, "reward_accuracy": acc}
    rounds = [{"skipped": {"longer than the context": dropped}, "train_last_tenth": last}]
    return {
        "name": f"f{fraction}_s{seed}",
        "fraction": fraction,
        "seed": seed,
        "heldout": [*rows, {"task": "mean", "score": mean}],
        "heldout_mean": mean,
        "pairs_on_policy": on,
        "pairs_off_policy": off,
        "rounds": rounds,
        "seconds": 10.0 * (seed + 1),
    }


def test_summary_of_hand_worked_runs():
    sft = _run(None, 0, {"a": 0.2, "b": 0.3}, on=0, off=0)  # the reference row: no DPO, mean 0.25
    results = [
        sft,
        _run(1.0, 1, {"a": 0.6, "b": 0.2}, on=8, off=2, acc=0.5),  # mean 0.4
        _run(1.0, 0, {"a": 0.4, "b": 0.0}, on=10, off=0, dropped=2, acc=1.0),  # mean 0.2
        _run(0.0, 0, {"a": 0.1, "b": 0.1}, on=0, off=9, dropped=1),  # mean 0.1
        {"name": "f1_s2", "fraction": 1.0, "seed": 2, "error": "DataError: ..."},  # counts nowhere but "failed"
    ]
    s = summarise(results)
    assert s["sft"] == {"a": 0.2, "b": 0.3} and s["sft_mean"] == 0.25 and [r["name"] for r in s["failed"]] == ["f1_s2"]
    zero, one = s["fractions"]  # sorted by fraction
    assert zero["fraction"] == 0.0 and zero["std"] == 0.0 and zero["on_share"] == 0.0
    assert zero["delta"] == pytest.approx(0.1 - 0.25) and zero["dropped"] == 1
    assert one["seeds"] == [0, 1] and one["per_seed"] == pytest.approx([0.2, 0.4])
    assert one["mean"] == pytest.approx(0.3) and one["delta"] == pytest.approx(0.05)
    assert one["std"] == pytest.approx(0.1 * 2**0.5)  # sample s.d. of {0.2, 0.4}: sqrt(2 · 0.1² / 1)
    assert one["pairs_on"] == 9 and one["pairs_off"] == 1 and one["on_share"] == pytest.approx(18 / 20)
    assert one["dropped"] == 1 and one["reward_accuracy"] == 0.75 and one["seconds"] == 15.0
    assert one["tasks"] == pytest.approx({"a": 0.5, "b": 0.1})
    lines = table_lines(s)
    assert lines[2] == "| 0 | 0.00 | 0 + 9 (1) | 0.100 | 0.000 | -0.150 | 0.500 | 1.000 | 1.00 |"
    assert lines[3] == "| 1 | 0.90 | 9 + 1 (1) | 0.300 | 0.141 | +0.050 | 0.500 | 1.000 | 0.75 |"
    assert lines[4] == "| SFT (no DPO) | — | — | 0.250 | — | — | — | — | — |"


def test_judge_url_without_model_is_one_line_error(tmp_path):
    cmd = [sys.executable, "-m", "kamado.cli", "experiment", "dpo-mix", "--quick", "--out", str(tmp_path)]
    r = subprocess.run([*cmd, "--judge-url", "http://x/v1"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--judge-model" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_the_quick_experiment_end_to_end(tmp_path):
    out, page = tmp_path / "mix", tmp_path / "page" / "dpo_mix.md"
    cmd = [sys.executable, "-m", "kamado.cli", "experiment", "dpo-mix", "--quick", "--out", str(out)]
    r = subprocess.run([*cmd, "--page", str(page)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    results = {p.parent.name: json.loads(p.read_text()) for p in out.glob("runs/*/result.json")}
    assert sorted(results) == ["f0.25_s0", "f0.5_s0", "f0.75_s0", "f0_s0", "f1_s0", "sft"]
    for name, res in results.items():
        assert len(res["heldout"]) == 13 and res["heldout_mean"] == res["heldout"][-1]["score"]  # 12 tasks + mean
        if name == "sft":
            continue
        pairs = [json.loads(x) for x in (out / "runs" / name / "dpo/round_1/pairs.jsonl").read_text().splitlines()]
        on = sum(p.get("source") == "on_policy" for p in pairs)
        assert (res["pairs_on_policy"], res["pairs_off_policy"]) == (on, len(pairs) - on)  # what was trained on
        assert res["pairs_on_policy"] + res["pairs_off_policy"] <= 6  # pairs_per_round of the quick grid
        if res["fraction"] == 0:
            assert res["pairs_on_policy"] == 0
    summary = summarise(list(results.values()))
    text = page.read_text()
    for line in table_lines(summary):  # the page's table is the runs' own numbers
        assert line in text
    for row in summary["fractions"]:
        runs = [res for res in results.values() if res["fraction"] == row["fraction"]]
        assert row["mean"] == pytest.approx(sum(x["heldout_mean"] for x in runs) / len(runs))
    for fig in ("dpo_mix_heldout.png", "dpo_mix_train.png"):
        assert (page.parent / "figures" / fig).stat().st_size > 10_000 and f"figures/{fig}" in text
    mtimes = {p: p.stat().st_mtime for p in out.glob("runs/*/result.json")}
    r = subprocess.run([*cmd, "--page", str(page)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and {p: p.stat().st_mtime for p in mtimes} == mtimes  # finished runs are skipped


def test_fractions_flag_is_checked(tmp_path):
    from kamado.errors import ConfigError
    from kamado.experiments.dpo_mix_report import parse_fractions

    assert parse_fractions("0,0.5,1") == [0.0, 0.5, 1.0]
    for bad in ("0,x", "1.5", "0,0", "-0.1", "nan"):
        with pytest.raises(ConfigError, match="--fractions"):
            parse_fractions(bad)


@pytest.mark.slow
def test_the_judge_benchmarks_run_when_an_endpoint_is_given(tmp_path):
    """One fraction of the quick grid from an existing base, judged through a real endpoint (`kamado serve` of a
    random model whose context fits the judge prompts): every run carries its judge reports, every judge call is
    answered, and the page shows them per run."""
    from kamado.config import ModelConfig, RunConfig, to_dict
    from kamado.model.transformer import Transformer
    from kamado.serve.background import serve_in_background
    from kamado.tokenizer import Tokenizer
    from kamado.train.checkpoint import save_checkpoint

    cmd = [sys.executable, "-m", "kamado.cli", "experiment", "dpo-mix", "--quick", "--workers", "1"]
    first = tmp_path / "first"
    r = subprocess.run([*cmd, "--out", str(first), "--fractions", "1"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.parent.name for p in first.glob("runs/*/result.json")) == ["f1_s0", "sft"]
    base, out, page = first / "base", tmp_path / "judged", tmp_path / "judged.md"
    judge = tmp_path / "judge"  # the quick base's context (512) is shorter than the judge prompts
    cfg = RunConfig(out_dir=str(judge))
    vocab = Tokenizer.load(base / "tokenizer").vocab_size
    cfg.model = ModelConfig(vocab, d_model=64, n_layers=1, n_heads=2, n_kv_heads=1, ffn_hidden=128, max_seq_len=4096)
    save_checkpoint(judge / "checkpoints", 1, Transformer(cfg.model).eval(), None, {"config": to_dict(cfg)})
    with serve_in_background(judge, base / "tokenizer") as (url, name):
        judged = [*cmd, "--base", str(base), "--out", str(out), "--fractions", "0", "--page", str(page)]
        r = subprocess.run(
            [*judged, "--judge-url", url, "--judge-model", name], cwd=ROOT, capture_output=True, text=True, timeout=900
        )
    assert r.returncode == 0, r.stderr[-3000:]
    results = {p.parent.name: json.loads(p.read_text()) for p in out.glob("runs/*/result.json")}
    assert sorted(results) == ["f0_s0", "sft"]
    text = page.read_text()
    assert "Judge benchmarks: not run" not in text and f"`{name}` at {url}" in text
    for run, res in results.items():
        report = res["judge"]["reports"][run]
        assert set(report) == {"ja_mt_bench", "rakuda"}
        for bench in report.values():  # a random judge's grades are mostly unreadable, but every call is answered
            assert bench["judgments"] > 0 and bench["errors"] == 0
            assert bench["scored"] + bench["unparseable"] == bench["judgments"]
        assert any(line.startswith(f"| {run} | ") for line in text.splitlines())
