"""`kamado corpus run` killed for real (SIGKILL to the whole process group, mid-stage) and started again with the
same command ends with the same shards as a run that was never interrupted; the Ray executor, on a real local Ray
started here with 2 CPUs, writes the same shards as the local one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kamado.corpus.config import load_corpus_config
from kamado.corpus.pipeline import run_corpus

ROOT = Path(__file__).parents[2]
SAMPLE = ROOT / "samples" / "warc"
PRESET = ROOT / "recipes" / "corpus" / "sample.toml"
# small shards so the output is several files; a generous timeout so no page is dropped because the machine is busy
ARGS = ["--reshard.shard_bytes=8000", "--extract_timeout_s=30"]

pytestmark = pytest.mark.slow


def command(out: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "kamado.cli",
        "corpus",
        "run",
        str(SAMPLE),
        "--out",
        str(out),
        "--config",
        str(PRESET),
    ]


def shards(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "shards").iterdir())}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("whole") / "out"
    subprocess.run([*command(out), *ARGS], check=True, capture_output=True, timeout=300)
    return shards(out)


def _kill_when(out: Path, ready: str, timeout_s: float = 120) -> None:
    proc = subprocess.Popen(
        [*command(out), *ARGS], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.monotonic() + timeout_s
    try:
        while not any(out.glob(ready)):
            assert proc.poll() is None, f"the run finished before reaching {ready}"
            assert time.monotonic() < deadline, f"{ready} never appeared"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the command, its datatrove workers and the sandboxes, without warning
        proc.wait()


@pytest.mark.parametrize(
    "ready",
    [
        "work/extracted/*.jsonl.gz",  # an extraction task is writing its output
        "work/logs/dedup_minhash_buckets/*",  # the dedup stages are under way
    ],
)
def test_killed_run_restarted_with_the_same_command_is_identical(
    uninterrupted: dict[str, bytes], tmp_path: Path, ready: str
) -> None:
    out = tmp_path / "out"
    _kill_when(out, ready)
    assert not (out / "shards" / "manifest.json").exists()
    done = subprocess.run([*command(out), *ARGS], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert shards(out) == uninterrupted  # byte for byte: no document lost, none duplicated


def test_ray_executor_writes_the_same_shards_as_local(uninterrupted: dict[str, bytes], tmp_path: Path) -> None:
    ray = pytest.importorskip("ray", reason="Ray is in the dev extra; install kamado[ray] to run on a Ray cluster")
    cfg = load_corpus_config(PRESET, [*ARGS, "--executor=ray"])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        summary = run_corpus(cfg, SAMPLE, tmp_path / "out")
    finally:
        ray.shutdown()
    assert summary["executor"] == "ray"
    assert shards(tmp_path / "out") == uninterrupted
