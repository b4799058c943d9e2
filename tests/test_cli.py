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


def small_train_config(tmp_path: Path, shards: Path, seq_len: int, steps: int, extra: str = "") -> Path:
    """A one-layer model on `shards` (the `trained` fixture's 400-id tokenizer), into tmp_path/run."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'out_dir = "{tmp_path / "run"}"\n[model]\nvocab_size = 400\nd_model = 32\nn_layers = 1\nn_heads = 2\n'
        f"n_kv_heads = 1\nffn_hidden = 32\nmax_seq_len = {seq_len}\n[data]\nseq_len = {seq_len}\n"
        f'[[data.sources]]\nname = "ja"\npath = "{shards}"\n'
        f"[train]\nsteps = {steps}\nbatch_size = 2\npeak_flops = 1e9\n{extra}"
    )
    return cfg


def test_train_then_generate_from_the_run_folder(capsys, trained, tmp_path):
    cfg = small_train_config(tmp_path, trained / "shards", seq_len=32, steps=3)
    assert main(["train", str(cfg), "--no-progress"]) == 0
    assert (tmp_path / "run/checkpoints/step_00000003/model.safetensors").is_file()
    capsys.readouterr()
    args = ["generate", str(tmp_path / "run"), "--tokenizer", str(trained / "tok"), "--prompt", "吾輩は"]
    assert main([*args, "--max-new-tokens", "5", "--temperature", "0"]) == 0
    assert capsys.readouterr().out.startswith("吾輩は")


def test_a_rerun_with_another_model_shape_is_one_line(capsys, trained, tmp_path):
    """Reusing a run folder with another d_model used to end in torch's traceback of size mismatches."""
    cfg = small_train_config(tmp_path, trained / "shards", seq_len=16, steps=2, extra="[checkpoint]\nevery = 1\n")
    assert main(["train", str(cfg), "--no-progress"]) == 0
    capsys.readouterr()
    expect_error(capsys, ["train", str(cfg), "--no-progress", "--model.d_model=16"], "model.d_model = 32 there, 16 now")
    assert main(["train", str(cfg), "--no-progress", "--train.steps=3"]) == 0  # the same shape resumes


def test_generate_without_checkpoint(capsys, tmp_path):
    expect_error(capsys, ["generate", str(tmp_path), "--prompt", "x"], "checkpoint")


def test_params_prints_the_exact_count_of_the_100b_shape(capsys):
    assert main(["params", str(ROOT / "recipes/100b.toml")]) == 0
    out = capsys.readouterr().out
    d, L, V, H, KV, hd, F = 10240, 80, 100000, 80, 8, 128, 33792
    per_layer = d * (H + 2 * KV) * hd + H * hd * d + 3 * d * F + 2 * d + 2 * hd
    assert f"parameters: {2 * V * d + L * per_layer + d:,}" in out


TORCH_AT_EXIT = (
    "import atexit, sys; atexit.register(lambda: print('torch' in sys.modules, file=sys.stderr)); "
    "from kamado.cli import main; sys.exit(main(sys.argv[1:]))"
)


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["plan", "recipes/100b.toml", "--gpus", "1024"],
        ["tokenizer", "train", "samples/en_heldout.jsonl.gz"],
    ],
    ids=["help", "plan", "tokenizer-train"],
)
def test_commands_without_a_model_do_not_import_torch(tmp_path, args):
    """torch takes 1.4-2 s to import: `kamado --help` went from 2.25 s to 0.24 s when `kamado plan`'s FLOP count
    stopped importing it."""
    if args[0] == "tokenizer":
        args = [*args, "--out", str(tmp_path / "tok"), "--vocab-size", "300"]
    r = subprocess.run([sys.executable, "-c", TORCH_AT_EXIT, *args], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1] == "False"


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


def test_bad_config_values_fail_before_any_work(capsys, tmp_path):
    tiny = str(ROOT / "recipes/tiny.toml")
    out = f"--out_dir={tmp_path / 'run'}"
    expect_error(capsys, ["params", tiny, "--train.steps=-5"], "train.steps = -5: must be an integer >= 1")
    expect_error(capsys, ["train", tiny, out, "--train.grad_accum=0"], "train.grad_accum = 0")
    expect_error(capsys, ["train", tiny, out, "--optim.lr=nan"], "optim.lr = nan: must be a finite number > 0")
    expect_error(capsys, ["run", tiny, out, '--schedule.kind="bogus"'], "schedule.kind = 'bogus'")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["tokenizer", "train", "IN", "--out", "OUT", "--vocab-size", "0"], "--vocab-size = 0: must be an integer in"),
        (["tokenizer", "train", "IN", "--out", "OUT", "--min-frequency", "-1"], "--min-frequency = -1"),
        (["tokenize", "IN", "--tokenizer", "T", "--out", "OUT", "--shard-tokens", "0"], "--shard-tokens = 0"),
        (["generate", "RUN", "--prompt", ""], "--prompt is empty"),
        (["generate", "RUN", "--prompt", "x", "--top-p", "0"], "--top-p = 0.0: must be a number in (0, 1]"),
        (["generate", "RUN", "--prompt", "x", "--temperature", "-1"], "--temperature = -1.0: must be a finite"),
        (["generate", "RUN", "--prompt", "x", "--temperature", "nan"], "--temperature = nan"),
        (["generate", "RUN", "--prompt", "x", "--top-k", "-1"], "--top-k = -1"),
        (["generate", "RUN", "--prompt", "x", "--max-new-tokens", "0"], "--max-new-tokens = 0"),
        (["generate", "RUN", "--prompt", "x", "--seed", str(10**30)], "--seed = 1.000e+30"),
        (["corpus", "run", "IN", "--out", "OUT", "--tasks", "0"], "corpus.tasks = 0"),
        (["corpus", "run", "IN", "--out", "OUT", "--workers", "-1"], "corpus.workers = -1"),
    ],
)
def test_bad_flag_values_are_one_line_before_any_work(capsys, tmp_path, args, needle):
    paths = {"IN": SAMPLE, "OUT": tmp_path / "out", "T": tmp_path / "tok", "RUN": tmp_path / "run"}
    expect_error(capsys, [str(paths.get(a, a)) for a in args], needle)
    assert not (tmp_path / "out").exists()


def test_tokenize_input_error_leaves_no_new_output(capsys, trained, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": "unterminated}\n')
    cmd = ["tokenize", str(bad), "--tokenizer", str(trained / "tok"), "--out"]
    expect_error(capsys, [*cmd, str(tmp_path / "new" / "shards")], "bad.jsonl:2: invalid JSON (")
    assert not (tmp_path / "new").exists()  # the folders this run made are gone
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    expect_error(capsys, [*cmd, str(mine), "--shard-tokens", "1"], "bad.jsonl:2")  # shard 0 written, then the error
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]  # a folder that was there keeps what it held


def test_json_error_says_at_once(capsys, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "unterminated}\n')  # json's message ends in "at": "Invalid control character at"
    expect_error(capsys, ["tokenizer", "train", str(bad), "--out", str(tmp_path / "t")], "character at column 24)")
