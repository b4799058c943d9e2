"""SIGKILL a real `kamado run` with its post-training stages (SFT, two DPO rounds, merge, held-out table) inside a
DPO round, rerun the same command, and demand the uninterrupted run's post-training results bit for bit."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest
from safetensors.numpy import load_file

pytestmark = pytest.mark.slow

KILLS = [("posttrain.after_round_pairs", 2), ("posttrain.before_round_record", 1)]


def outcome(run: Path) -> dict[str, Any]:
    """What the post-training stages produced that must not depend on kills or reruns."""
    out: dict[str, Any] = {"heldout": json.loads((run / "posttrain_eval.json").read_text())}
    for stage in ("sft", "dpo/round_1", "dpo/round_2", "merged"):
        final = sorted((run / stage / "checkpoints").glob("step_????????"))[-1]
        out[stage] = {k: v.tobytes() for k, v in load_file(str(final / "model.safetensors")).items()}
    for k in (1, 2):
        rdir = run / "dpo" / f"round_{k}"
        out[f"pairs_{k}"] = (rdir / "pairs.jsonl").read_text()
        out[f"round_{k}"] = {x: v for x, v in json.loads((rdir / "round.json").read_text()).items() if x != "start"}
    return out


@pytest.fixture(scope="module")
def post_reference(tmp_path_factory, micro, reference, posttrain_args) -> dict[str, Any]:
    """The post-training stages run in a copy of the finished micro run (`reference`): its pre-training is the
    same with or without them, and each run here starts from such a copy (~15 s less a run)."""
    out = micro.copy_of(reference[0], tmp_path_factory.mktemp("post_reference") / "run")
    micro.ok(out, *posttrain_args)
    return outcome(out)


@pytest.mark.parametrize(("name", "hit"), KILLS, ids=[f"{n}:{h}" for n, h in KILLS])
def test_kill_inside_post_training_then_rerun(
    micro, reference, posttrain_args, post_reference, tmp_path, fault_counts, name, hit
):
    out = micro.copy_of(reference[0], tmp_path / "run")
    r = micro.run(out, *posttrain_args, failpoint=f"{name}:{hit}")
    assert r.returncode == -signal.SIGKILL, f"failpoint {name}:{hit} was not reached: {r.stderr[-2000:]}"
    micro.ok(out, *posttrain_args)
    got = outcome(out)
    for key, want in post_reference.items():
        assert got[key] == want, f"killed at {name}:{hit}: {key} differs from the uninterrupted run"
    fault_counts["kills survived"] += 1
