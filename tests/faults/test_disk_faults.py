"""A full disk and a read-only output folder: every writing command ends with one line naming the path and the
cause (exit 2, no traceback), and the same command run again once there is room finishes with the uninterrupted
run's results. Where the suite runs as root it mounts a small tmpfs (a real ENOSPC from the kernel); everywhere it
also injects ENOSPC/EROFS at the write call through a failpoint (`kamado.faults`)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "samples" / "ja_heldout.jsonl.gz"


def can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


class SmallFs:
    """A tmpfs mounted under a test's folder (root only): a real ENOSPC / EROFS from the kernel."""

    def __init__(self, where: Path):
        self.where, self.mounted = where, False

    def mount(self, size: str, ro: bool = False) -> Path:
        self.where.mkdir(exist_ok=True)
        opts = f"size={size}" + (",ro" if ro else "")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(self.where)], capture_output=True)
        if r.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
        self.mounted = True
        return self.where

    def resize(self, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.where)], check=True)


@pytest.fixture
def small_fs(tmp_path) -> Iterator[SmallFs]:
    if not can_mount():
        pytest.skip("mounting a small tmpfs needs root (the injected-ENOSPC tests still run)")
    fs = SmallFs(tmp_path / "fs")
    yield fs
    if fs.mounted:
        subprocess.run(["umount", str(fs.where)], check=False)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    tok = tmp_path_factory.mktemp("tok")
    r = kamado("tokenizer", "train", str(SAMPLE), "--out", str(tok), "--vocab-size", "300")
    assert r.returncode == 0, r.stderr
    return tok


_LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ \| (\w+) +\| (\S+?):")  # loguru's record header


def kamados_own_output(stderr: str) -> str:
    """stderr without what datatrove's workers log: their loguru records (a failed task's traceback; a worker
    forked from `kamado` shows the frames it inherited, kamado/cli.py among them) and the blocks loguru prints
    when its own log file cannot be written (a full disk). Several workers write to stderr at once, so two such
    blocks can interleave (header, header, ..., end, end): they are counted, not toggled."""
    kept, skipping, open_blocks = [], False, 0
    for line in stderr.splitlines():
        if "--- Logging error in Loguru Handler" in line:
            open_blocks += 1
        if open_blocks:
            open_blocks -= "--- End of logging error" in line
            continue
        header = _LOG_RECORD.match(line)
        if header:  # an ERROR record's traceback follows it; other records are one line
            datatrove = header.group(2).startswith("datatrove.")
            skipping = datatrove and header.group(1) in ("ERROR", "CRITICAL")
            if datatrove:
                continue
        elif line.startswith("kamado"):
            skipping = False
        if not skipping:
            kept.append(line)
    return "\n".join(kept)


def test_only_datatroves_worker_logs_are_set_aside():
    worker = (
        "2026-12-05 02:49:42.452 | INFO     | datatrove.executor.local:_launch_run_for_rank:81 - 1/2 tasks completed.\n"
        "2026-12-05 02:49:42.460 | ERROR    | datatrove.executor.base:_run_for_rank:150 - [Errno 28] No space\n"
        'Traceback (most recent call last):\n  File "/x/src/kamado/cli.py", line 268, in <module>\nOSError: full\n'
        "--- Logging error in Loguru Handler #2 ---\nTraceback (most recent call last):\n--- End of logging error ---\n"
    )
    assert kamados_own_output(worker + "kamado: error: full") == "kamado: error: full"
    block = "--- Logging error in Loguru Handler #{0} ---\nRecord was: {{}}\n"
    interleaved = block.format(1) + block.format(2) + "Traceback (most recent call last):\nOSError: full\n"
    interleaved += "--- End of logging error ---\nTraceback (most recent call last):\n--- End of logging error ---\n"
    assert kamados_own_output(interleaved + "kamado: error: full") == "kamado: error: full"  # two workers at once
    bare = 'Traceback (most recent call last):\n  File "/x/src/kamado/cli.py", line 268, in <module>\nOSError: full'
    assert kamados_own_output(worker.split("\n", 1)[0] + "\n" + bare) == bare  # after a one-line record: kept
    assert kamados_own_output("kamado: warning: x\n" + bare) == "kamado: warning: x\n" + bare


def one_line_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr[-3000:])
    # datatrove logs a failed corpus task's traceback in its worker (and loguru one for its own log file on a
    # full disk) before kamado reports the error; a traceback of kamado's own is not allowed
    own = kamados_own_output(r.stderr)
    assert "Traceback" not in own and "kamado/cli.py" not in own, own[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("kamado: error: "), r.stderr[-3000:]
    for n in needles:
        assert n in last, last
    return last


def kamado(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kamado.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        timeout=600,
    )


# ------------------------------------------------------------------------------------- kamado run, disk full
@pytest.mark.slow
@pytest.mark.parametrize("size", ["300k", "1200k", "3000k"])  # full in: the corpus, the shards, the checkpoints
def test_run_on_a_full_disk_then_resume(micro, reference, small_fs, fault_counts, size):
    out = small_fs.mount(size) / "run"
    r = micro.run(out)
    one_line_error(r, "No space left on device", str(out))
    small_fs.resize("64m")  # the user frees space...
    micro.ok(out)  # ...and runs the same command again
    micro.assert_same(micro.outcome(out), reference[1], f"disk full at {size}")
    fault_counts["full disks survived"] += 1


@pytest.mark.slow
@pytest.mark.parametrize("nth", [1, 12, 60])  # the corpus settings, a shard index, a checkpoint file
def test_run_with_injected_enospc_then_resume(micro, reference, tmp_path, fault_counts, nth):
    out = tmp_path / "run"
    r = micro.run(out, failpoint=f"disk.write:{nth}@enospc")
    one_line_error(r, "No space left on device", str(out))  # the file it could not write, as a real ENOSPC names
    micro.ok(out)
    micro.assert_same(micro.outcome(out), reference[1], f"ENOSPC at write {nth}")
    fault_counts["full disks survived"] += 1


# ------------------------------------------------------------------------- every command, read-only output
def commands(out: Path, tok: Path) -> dict[str, list[str]]:
    return {
        "run": ["run", "recipes/tiny.toml", f"--out_dir={out}/run"],
        "tokenizer train": ["tokenizer", "train", str(SAMPLE), "--out", f"{out}/tok", "--vocab-size", "300"],
        "tokenize": ["tokenize", str(SAMPLE), "--tokenizer", str(tok), "--out", f"{out}/s"],
        "corpus run": ["corpus", "run", "samples/warc", "--out", f"{out}/c"],
    }


@pytest.mark.parametrize("command", ["run", "tokenizer train", "tokenize", "corpus run"])
def test_read_only_output_folder(tmp_path, tokenizer_dir, fault_counts, command):
    if can_mount():
        fs = SmallFs(tmp_path / "fs")
        ro = fs.mount("1m", ro=True)
    else:
        fs, ro = None, tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
    try:
        r = kamado(*commands(ro, tokenizer_dir)[command])
    finally:
        if fs is not None:
            subprocess.run(["umount", str(fs.where)], check=False)
    last = one_line_error(r, str(ro))
    assert "Read-only file system" in last or "Permission denied" in last, last
    fault_counts["unwritable outputs reported"] += 1


@pytest.mark.parametrize("command", ["tokenizer train", "tokenize", "corpus run"])
def test_injected_enospc_in_every_writing_command(tmp_path, tokenizer_dir, fault_counts, command):
    args = commands(tmp_path, tokenizer_dir)[command]
    r = kamado(*args, env={"KAMADO_FAILPOINT": "disk.write:1@enospc"})
    one_line_error(r, "No space left on device")
    r = kamado(*args)  # room again: the same command finishes
    assert r.returncode == 0, r.stderr[-3000:]
    fault_counts["full disks survived"] += 1


@pytest.mark.parametrize("command", ["tokenizer train", "tokenize", "corpus run"])
def test_a_file_in_the_way_of_the_output_folder(tmp_path, tokenizer_dir, fault_counts, command):
    blocker = tmp_path / "in_the_way"
    blocker.write_text("the user's file\n")
    args = commands(blocker, tokenizer_dir)[command]  # outputs go under <blocker>/..., which cannot be a folder
    r = kamado(*args)
    one_line_error(r, str(blocker))
    assert blocker.read_text() == "the user's file\n"  # and the file is left as it was
    fault_counts["unwritable outputs reported"] += 1
