"""Corrupt the newest checkpoint of a finished run — truncate, delete or flip a byte of each of its files — and
tear the last line of metrics.jsonl: the rerun must say what it found, fall back to the previous intact
checkpoint, keep the corrupt one aside, and still end with the uninterrupted run's results bit for bit."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kamado.completion import RECORD
from kamado.recipe.cached import weights_sha256
from kamado.train import checkpoint as ckpt

FILES = ["model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json", "integrity.json"]


def corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "delete":
        path.unlink()
    else:  # a flipped byte in the middle: the size still matches, only the checksum can tell
        i = len(data) // 2
        path.write_bytes(data[:i] + bytes([data[i] ^ 0x5A]) + data[i + 1 :])


def copy_run(reference: tuple, tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "run"
    shutil.copytree(reference[0], out)
    newest = ckpt.list_checkpoints(out / "checkpoints")[-1]
    return out, newest


# one damage per file here (each rerun is a real `kamado run`); every damage × file pair is checked in-process by
# tests/train/test_checkpoint_integrity.py
DAMAGE = list(zip(FILES, ["truncate", "delete", "flip", "truncate", "delete"], strict=True))
DAMAGE += [("model.safetensors", "flip"), ("integrity.json", "flip")]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "how"), DAMAGE)
def test_corrupt_newest_checkpoint_falls_back(micro, reference, tmp_path, fault_counts, name, how):
    out, newest = copy_run(reference, tmp_path)
    corrupt(newest / name, how)
    r = micro.ok(out)
    assert f"checkpoint {newest} is corrupt" in r.stderr and "using step_00000020" in r.stderr, r.stderr[-2000:]
    assert (newest.parent / (newest.name + ".corrupt")).is_dir()  # kept for inspection, not deleted
    micro.assert_same(micro.outcome(out), reference[1], f"{name} {how}")
    fault_counts["corruptions detected"] += 1


def kamado(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kamado.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_generate_with_corrupt_checkpoints(reference, tmp_path, fault_counts):
    out, newest = copy_run(reference, tmp_path)
    corrupt(newest / "model.safetensors", "truncate")
    r = kamado("generate", str(out), "--prompt", "吾輩は", "--max-new-tokens", "4")
    assert r.returncode == 0 and "is corrupt" in r.stderr and "using step_00000020" in r.stderr, r.stderr
    r = kamado("generate", str(newest), "--prompt", "吾輩は")  # the corrupt one, named: refused in one line
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "model.safetensors has" in r.stderr, r.stderr
    for p in ckpt.list_checkpoints(out / "checkpoints"):
        corrupt(p / "state.json", "delete")
    r = kamado("generate", str(out), "--prompt", "吾輩は")
    assert r.returncode == 2 and r.stderr.startswith("kamado: error: no intact checkpoint"), r.stderr
    assert "Traceback" not in r.stderr
    fault_counts["corruptions detected"] += 3


@pytest.mark.slow
def test_no_intact_checkpoint_is_one_clear_error(micro, reference, tmp_path, fault_counts):
    out, _ = copy_run(reference, tmp_path)
    for p in ckpt.list_checkpoints(out / "checkpoints"):
        corrupt(p / "optimizer.safetensors", "delete")
    r = micro.run(out)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1].startswith("kamado: error: no intact checkpoint"), r.stderr
    assert "Traceback" not in r.stderr
    assert len(ckpt.list_checkpoints(out / "checkpoints")) == 3  # nothing deleted or renamed: the user decides
    fault_counts["corruptions detected"] += 1


@pytest.mark.slow
@pytest.mark.parametrize("tail", ['{"step": 25, "lo', "\x00\x00\x00"])
def test_torn_metrics_tail_is_dropped_on_resume(micro, reference, tmp_path, fault_counts, tail):
    out, newest = copy_run(reference, tmp_path)
    corrupt(newest / "rng.safetensors", "delete")  # so the rerun really trains (and appends) again
    with open(out / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(tail)  # what a kill or a full disk leaves in the middle of an append: no newline
    r = micro.ok(out)
    assert "torn line" in r.stderr, r.stderr[-2000:]
    micro.assert_same(micro.outcome(out), reference[1], f"torn tail {tail!r}")
    fault_counts["corruptions detected"] += 1


@pytest.mark.slow
@pytest.mark.parametrize(
    ("target", "how"),
    [
        ("tokenizer/tokenizer.json", "truncate"),
        ("tokenizer/tokenizer_config.json", "delete"),
        ("data/ja/shard_00000.idx", "delete"),
        ("data/ja_web/shard_00000.bin", "truncate"),
    ],
)
def test_damaged_stage_output_is_rebuilt(micro, reference, tmp_path, fault_counts, target, how):
    """A stage whose output no longer matches its completion record runs again instead of being trusted."""
    out, _ = copy_run(reference, tmp_path)
    corrupt(out / target, how)
    r = micro.ok(out)
    if target.startswith("tokenizer"):  # the tokenizer stage ran again (a rule with its name is printed)
        assert " tokenizer " in r.stdout, r.stdout[-2000:]
    micro.assert_same(micro.outcome(out), reference[1], f"{target} {how}")
    fault_counts["corruptions detected"] += 1


@pytest.mark.slow
def test_a_rerun_reads_the_checks_back_for_the_same_weights_only(micro, reference, tmp_path):
    """Held-out bits/char is kept under the final weights' hash (kamado.recipe.cached): a rerun over a finished run
    reports the kept result; with another hash in the record it computes it again."""
    out, newest = copy_run(reference, tmp_path)
    record = out / "checks" / "bits_per_char" / RECORD
    kept = json.loads(record.read_text())
    assert kept["info"]["key"]["weights"] == weights_sha256(ckpt.load_model(newest)[0])
    name = next(iter(kept["info"]["result"]))
    kept["info"]["result"][name]["model"] = 0.125  # a marker only a read-back can report
    record.write_text(json.dumps(kept))
    micro.ok(out)
    assert json.loads((out / "summary.json").read_text())["bits_per_char"][name]["model"] == 0.125
    kept["info"]["key"]["weights"] = "0" * 64  # as if the final weights had changed
    record.write_text(json.dumps(kept))
    micro.ok(out)
    assert micro.outcome(out)["bits_per_char"] == reference[1]["bits_per_char"]
