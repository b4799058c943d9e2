"""Shared by the whole suite: the overrides that shrink the tiny recipe to a seconds-long end-to-end run."""

import os
from collections import Counter
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (`make test` runs `-n auto`) every worker and the processes its tests start use one torch
    thread: on 2 cores, two micro `kamado run`s at once took 48.1 s with two threads each and 22.0 s with one
    (LOG.md, session 13)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        import torch

        torch.set_num_threads(1)


# The fault-injection suite's tally (tests/faults): what its tests survived, by category. Under xdist each worker
# hands its tally to the controller, which prints the sum.
_FAULTS: Counter[str] = Counter()


@pytest.fixture
def fault_counts() -> Counter[str]:
    """Add to it: `fault_counts["kills survived"] += 1`."""
    return _FAULTS


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["fault_counts"] = dict(_FAULTS)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:  # pytest-xdist's controller: a worker finished
    _FAULTS.update(getattr(node, "workeroutput", {}).get("fault_counts", {}))


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    if _FAULTS:
        terminalreporter.section("fault-injection suite")
        terminalreporter.write_line("faults: " + ", ".join(f"{k} {v}" for k, v in sorted(_FAULTS.items())))


MICRO_DATA = Path(__file__).parent / "recipe" / "posttrain_micro"
BENCHMARKS = (Path(__file__).parents[1] / "../shared/data/benchmarks").resolve()  # the raw benchmark files (CI)

# Every stage of `kamado run recipes/tiny.toml` stays (web corpus, tokenizer, shards, two data phases, training with
# checkpoints and evaluations, bits/char, generation, report); only the sizes shrink.
SHRINK = [
    "--model.d_model=64",
    "--model.n_layers=2",
    "--model.n_heads=4",
    "--model.n_kv_heads=2",
    "--model.ffn_hidden=128",
    "--model.max_seq_len=64",
    "--data.seq_len=64",
    "--data.phases=[{start_tokens = 0, weights = {ja = 1.0, en = 1.0, ja_web = 0.5}},"
    " {start_tokens = 4096, weights = {ja = 1.0}}]",
    "--tokenizer.vocab_size=1000",
    "--train.batch_size=4",
    "--train.log_every=2",
    "--train.peak_flops=1e11",
    "--checkpoint.every=4",
    "--generate.max_new_tokens=8",
    "--jaster.limit=2",  # jaster: 2 samples per task (their prompts are longer than this context: counted as such)
    '--pfgen.data=""',  # pfgen-bench needs room for a 128-token answer: its stage is tested in tests/eval/pfgen
    "--judge.limit=1",  # the judge benchmarks: 1 question each (too long for this context too: counted as errors)
    "--sft.data=[]",  # no post-training stages (POSTTRAIN_MICRO turns them on with data that fits 64 tokens)
]

# The post-training stages shrunk the same way: short synthetic conversations and pairs (tests/recipe/posttrain_micro).
POSTTRAIN_MICRO = [
    f'--sft.data=["{MICRO_DATA / "sft.jsonl"}"]',
    "--sft.train.steps=4",
    "--sft.train.batch_size=2",
    "--sft.train.seq_len=64",
    f'--dpo.pairs=["{MICRO_DATA / "pairs.jsonl"}"]',
    f'--dpo.prompts=["{MICRO_DATA / "prompts.jsonl"}"]',
    "--dpo.pairs_per_round=6",
    "--dpo.samples_per_prompt=3",
    "--dpo.max_new_tokens=4",
    "--dpo.train.steps=2",
    "--dpo.train.batch_size=2",
    "--dpo.train.seq_len=64",
    f'--heldout.test=["{MICRO_DATA / "test.jsonl"}"]',
    "--heldout.per_task=5",
    "--heldout.max_new_tokens=4",
]


@pytest.fixture(scope="session")
def shrink_args() -> list[str]:
    return list(SHRINK)


@pytest.fixture(scope="session")
def posttrain_args() -> list[str]:
    return list(POSTTRAIN_MICRO)


@pytest.fixture(scope="session")
def bench() -> Path:
    """The shared folder's raw benchmark files; tests that need them skip on a clone without ../shared."""
    if not (BENCHMARKS / "SOURCES.md").is_file():
        pytest.skip(f"real benchmark files not found at {BENCHMARKS} (they live in the shared folder)")
    return BENCHMARKS
