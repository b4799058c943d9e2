"""Shared by the whole suite: the overrides that shrink the tiny recipe to a seconds-long end-to-end run."""

import pytest

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
]


@pytest.fixture(scope="session")
def shrink_args() -> list[str]:
    return list(SHRINK)
