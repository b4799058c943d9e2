"""The `kamado` command: help on every command, one clear message (no traceback) for every user error."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from kamado.cli import main

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "ja_heldout.jsonl.gz"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kamado.cli", *args], capture_output=True, text=True, cwd=ROOT)


@pytest.mark.parametrize(
    "cmd",
    [
        [],
        ["run"],
        ["train"],
        ["tokenizer", "train"],
        ["tokenize"],
        ["generate"],
        ["params"],
        ["corpus"],
        ["corpus", "eval-filters"],
        ["corpus", "run"],
    ],
)
def test_help_on_every_command(cmd):
    out = run_cli(*cmd, "--help")
    assert out.returncode == 0, out.stderr
    assert "usage: kamado" in out.stdout


def expect_error(capsys, args, *needles):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("kamado: error: ") and err.count("\n") == 1, err  # one line
    for n in needles:
        assert n in err, err


def test_bad_config_key(capsys):
    expect_error(capsys, ["train", str(ROOT / "recipes/tiny.toml"), "--optim.lrr=1"], "optim.lrr")


def test_train_without_data_sources(capsys):
    expect_error(capsys, ["train", str(ROOT / "recipes/small.toml")], "data.sources")


def test_missing_input_file(capsys, tmp_path):
    expect_error(
        capsys, ["tokenizer", "train", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "t")], "nope.jsonl"
    )


def test_empty_corpus(capsys, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    expect_error(capsys, ["tokenizer", "train", str(empty), "--out", str(tmp_path / "t")], "empty")


def test_bad_json_line_names_file_and_line(capsys, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": oops}\n')
    expect_error(capsys, ["tokenizer", "train", str(bad), "--out", str(tmp_path / "t")], "bad.jsonl:2")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("tok")
    assert main(["tokenizer", "train", str(SAMPLE), "--out", str(d / "tok"), "--vocab-size", "400"]) == 0
    assert main(["tokenize", str(SAMPLE), "--tokenizer", str(d / "tok"), "--out", str(d / "shards")]) == 0
    return d


def test_wrong_dtype_shard_is_a_clear_error(capsys, trained, tmp_path):
    manifest = json.loads((trained / "shards/manifest.json").read_text())
    assert manifest["dtype"] == "uint16"
    bad = tmp_path / "bad_shards"
    bad.mkdir()
    for f in (trained / "shards").iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    manifest["dtype"] = "uint32"
    (bad / "manifest.json").write_text(json.dumps(manifest))
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'out_dir = "{tmp_path / "run"}"\n[model]\nvocab_size = 400\nd_model = 32\nn_layers = 1\nn_heads = 2\n'
        f"n_kv_heads = 1\nffn_hidden = 32\nmax_seq_len = 16\n[data]\nseq_len = 16\n"
        f'[[data.sources]]\nname = "x"\npath = "{bad}"\n'
    )
    expect_error(capsys, ["train", str(cfg), "--train.steps=1"], "shard")


def test_train_then_generate_from_the_run_folder(capsys, trained, tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'out_dir = "{tmp_path / "run"}"\n[model]\nvocab_size = 400\nd_model = 32\nn_layers = 1\nn_heads = 2\n'
        f"n_kv_heads = 1\nffn_hidden = 32\nmax_seq_len = 32\n[data]\nseq_len = 32\n"
        f'[[data.sources]]\nname = "ja"\npath = "{trained / "shards"}"\n'
        "[train]\nsteps = 3\nbatch_size = 2\npeak_flops = 1e9\n"
    )
    assert main(["train", str(cfg), "--no-progress"]) == 0
    assert (tmp_path / "run/checkpoints/step_00000003/model.safetensors").is_file()
    capsys.readouterr()
    args = ["generate", str(tmp_path / "run"), "--tokenizer", str(trained / "tok"), "--prompt", "吾輩は"]
    assert main([*args, "--max-new-tokens", "5", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("吾輩は")


def test_generate_without_checkpoint(capsys, tmp_path):
    expect_error(capsys, ["generate", str(tmp_path), "--prompt", "x"], "checkpoint")


def test_params_prints_the_exact_count_of_the_100b_shape(capsys):
    assert main(["params", str(ROOT / "recipes/100b.toml")]) == 0
    out = capsys.readouterr().out
    d, L, V, H, KV, hd, F = 10240, 80, 100000, 80, 8, 128, 33792
    per_layer = d * (H + 2 * KV) * hd + H * hd * d + 3 * d * F + 2 * d + 2 * hd
    assert f"parameters: {2 * V * d + L * per_layer + d:,}" in out


def test_no_traceback_from_a_subprocess(tmp_path):
    gz = tmp_path / "corrupt.jsonl.gz"
    gz.write_bytes(gzip.compress(b'{"text": "a"}\n')[:-6])
    out = run_cli("tokenizer", "train", str(gz), "--out", str(tmp_path / "t"))
    assert out.returncode == 2 and "Traceback" not in out.stderr and "corrupt.jsonl.gz" in out.stderr


def test_corpus_eval_filters(tmp_path, capsys):
    labels = tmp_path / "labels.jsonl"
    good = "今日は朝から雨が降っていたので、私は家で静かに本を読んで過ごすことにしました。"
    bad = "激安セール！！送料無料！！今すぐクリック！！激安セール！！送料無料！！今すぐクリック！！"
    rows = [{"text": good, "label": "good"}, {"text": bad, "label": "bad"}]
    labels.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert main(["corpus", "eval-filters", str(labels), "--snippets"]) == 0
    out = capsys.readouterr().out.lower()
    assert "precision" in out and "recall" in out
    expect_error(capsys, ["corpus", "eval-filters", str(tmp_path / "missing.jsonl")], "missing.jsonl")


def test_corpus_run_config_errors(capsys, tmp_path):
    warcs = str(ROOT / "samples" / "warc")
    expect_error(capsys, ["corpus", "run", warcs, "--out", str(tmp_path), "--dedup.treshold=0.7"], "dedup.treshold")
    expect_error(capsys, ["corpus", "run", warcs, "--out", str(tmp_path), "--tasks=0"], "corpus.tasks")
    expect_error(capsys, ["corpus", "run", warcs, "--out", str(tmp_path), "--config", "nope.toml"], "nope.toml")
    expect_error(capsys, ["corpus", "run", str(tmp_path), "--out", str(tmp_path / "o")], "no .warc")
