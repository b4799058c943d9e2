"""`kamado.recipe.inputs`: a run folder remembers what its tokenizer and shards were made from, and a rerun with
other inputs stops with one line instead of mixing old outputs with new settings."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kamado.config import load_config
from kamado.errors import ConfigError
from kamado.recipe.inputs import check_same_inputs, fingerprint

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "samples"


def inputs(tmp_path: Path, **tokenizer: object) -> tuple[dict, dict[str, list[Path]], dict[str, Path]]:
    cfg = load_config(ROOT / "recipes" / "tiny.toml", [f"--tokenizer.{k}={v}" for k, v in tokenizer.items()])
    ja = tmp_path / "ja_aozora.jsonl.gz"
    if not ja.exists():
        shutil.copy(SAMPLES / "ja_aozora.jsonl.gz", ja)
    sources = {"ja": [ja], "en": [SAMPLES / "en_web.jsonl.gz"]}
    return cfg, sources, {"ja": SAMPLES / "ja_heldout.jsonl.gz"}


def test_the_first_run_records_and_the_same_inputs_pass(tmp_path: Path) -> None:
    cfg, sources, heldout = inputs(tmp_path)
    now = fingerprint(cfg, sources, heldout)
    check_same_inputs(tmp_path, now)
    assert json.loads((tmp_path / "inputs.json").read_text()) == now
    assert now["tokenizer.vocab_size"] == 8000 and now["corpus.sources.ja"][0].startswith("ja_aozora.jsonl.gz ")
    check_same_inputs(tmp_path, fingerprint(cfg, sources, heldout))  # the same command again


def test_other_tokenizer_settings_or_file_contents_are_named(tmp_path: Path) -> None:
    cfg, sources, heldout = inputs(tmp_path)
    check_same_inputs(tmp_path, fingerprint(cfg, sources, heldout))
    other, _, _ = inputs(tmp_path, vocab_size=16000)
    with pytest.raises(ConfigError, match=r"other inputs \(tokenizer.vocab_size: 8000 → 16000\); run with the same"):
        check_same_inputs(tmp_path, fingerprint(other, sources, heldout))
    sources["ja"][0].write_bytes(sources["ja"][0].read_bytes()[:-1] + b"\n")  # the same name, other bytes
    with pytest.raises(ConfigError, match=r"\(corpus.sources.ja: other files\)"):
        check_same_inputs(tmp_path, fingerprint(cfg, sources, heldout))
    with pytest.raises(ConfigError, match=r"corpus.heldout.en: other files; corpus.sources.ja: other files"):
        check_same_inputs(tmp_path, fingerprint(cfg, sources, {**heldout, "en": SAMPLES / "en_heldout.jsonl.gz"}))


def test_a_tokenizer_given_by_path_leaves_its_settings_out(tmp_path: Path) -> None:
    cfg, sources, heldout = inputs(tmp_path, path='"/somewhere/tok"')
    assert not [k for k in fingerprint(cfg, sources, heldout) if k.startswith("tokenizer.")]


def test_an_unreadable_record_is_one_clear_error(tmp_path: Path) -> None:
    cfg, sources, heldout = inputs(tmp_path)
    for text in ("{torn", "[1, 2]"):
        (tmp_path / "inputs.json").write_text(text)
        with pytest.raises(ConfigError, match=r"inputs.json is unreadable .*delete it"):
            check_same_inputs(tmp_path, fingerprint(cfg, sources, heldout))


def test_kamado_run_stops_before_any_stage(tmp_path: Path) -> None:
    """The real command on a folder first run with another vocabulary: one line, exit 2, nothing else written."""
    cfg = load_config(ROOT / "recipes" / "tiny.toml")
    out = tmp_path / "run"
    out.mkdir()
    sources = {"ja": [SAMPLES / "ja_aozora.jsonl.gz"], "en": [SAMPLES / "en_web.jsonl.gz"]}  # the recipe's own
    heldout = {"ja": SAMPLES / "ja_heldout.jsonl.gz", "en": SAMPLES / "en_heldout.jsonl.gz"}
    recorded = {**fingerprint(cfg, sources, heldout), "tokenizer.vocab_size": 4000}
    (out / "inputs.json").write_text(json.dumps(recorded))
    args = [sys.executable, "-m", "kamado.cli", "run", "recipes/tiny.toml", f"--out_dir={out}"]
    r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip() == (
        f"kamado: error: {out} was started with other inputs (tokenizer.vocab_size: 4000 → 8000); run with the "
        "same ones to resume, or use another out_dir"
    )
    assert sorted(p.name for p in out.iterdir()) == ["inputs.json"]


def test_a_missing_input_file_stops_kamado_run_before_the_web_corpus(tmp_path: Path) -> None:
    """Named before any stage, not minutes later when the tokenizer stage first reads it."""
    out = tmp_path / "run"
    args = [sys.executable, "-m", "kamado.cli", "run", "recipes/tiny.toml", f"--out_dir={out}"]
    r = subprocess.run([*args, '--corpus.heldout_en_file="nowhere.jsonl"'], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2, r.stderr[-2000:]
    missing = ROOT / "recipes" / "nowhere.jsonl"  # recipe paths are relative to the recipe file
    assert r.stderr.strip() == f"kamado: error: {missing}: file not found (named in recipes/tiny.toml's [corpus])"
    assert not (out / "corpus").exists() and not (out / "inputs.json").exists()
