"""The stability monitor on a mesh: a burst of noise in the data (a one-batch data phase of random tokens) makes
a loss spike; every rank sees the same reduced loss, so all skip the update or roll back together, and the run
goes on exactly as the one-process trainer's does."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kamado.data.shards import ShardWriter

from .conftest import Runs, assert_same_curve

NOISE = """
[[data.sources]]
name = "noise"
path = "{noise}"
[[data.phases]]
start_tokens = 0
weights = {{web = 1.0}}
[[data.phases]]
start_tokens = 1536
weights = {{noise = 1.0}}
[[data.phases]]
start_tokens = 1792
weights = {{web = 1.0}}
"""  # 256 tokens a step: step 7's batch alone is noise


@pytest.fixture(scope="module")
def spiky(runs: Runs) -> Runs:
    root = runs.root / "spiky"
    root.mkdir(exist_ok=True)
    rng = np.random.default_rng(5)
    with ShardWriter(root / "noise", vocab_size=128, eos_id=0, shard_tokens=2000) as w:
        for _ in range(100):
            w.add_document(rng.integers(1, 128, size=50))
    val = "[[data.val_sources]]"
    text = runs.config.read_text().replace(val, NOISE.format(noise=root / "noise") + val, 1)
    monitor = "[stability]\nenabled = true\nmin_history = 3\nwindow = 5\nz_threshold = 1.5"
    text = text.replace("[stability]\nenabled = false", monitor)
    (root / "config.toml").write_text(text.replace("steps = 4", "steps = 10"))
    return Runs(root)


CASES = {  # name: (max_spikes, event, ranks, layout); a rollback with async saves waits for the pending one
    "rollback-pp2-tp2": (1, "rollback", 4, ["--parallel.pp=2", "--parallel.tp=2"]),
    "skip-fsdp2": (2, "skip_update", 2, []),
    "rollback-fsdp2-async-saves": (1, "rollback", 2, ["--checkpoint.async_save=true"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_spike_handling_matches_one_process(spiky, case):
    max_spikes, event, nproc, layout = CASES[case]
    one, many = spiky.root / f"one-{max_spikes}", spiky.root / f"many-{case}"
    if not (one / "metrics.jsonl").is_file():  # the one-process reference, shared by the cases
        spiky.train(one, f"--stability.max_spikes={max_spikes}")
    spiky.train(many, f"--stability.max_spikes={max_spikes}", *layout, nproc=nproc)
    ev_one = [json.loads(x) for x in (one / "events.jsonl").read_text().splitlines()]
    ev_many = [json.loads(x) for x in (many / "events.jsonl").read_text().splitlines()]
    assert event in [e["event"] for e in ev_one]  # the noise batch did spike
    assert [(e["step"], e["event"]) for e in ev_many] == [(e["step"], e["event"]) for e in ev_one]
    assert_same_curve(spiky.metrics(many), spiky.metrics(one), what=f"max_spikes={max_spikes}")
