import pytest
import torch

from kamado.config import RunConfig


class CountingLoader:
    """A deterministic loader over a fixed random token stream: batch i depends only on (seed, i)."""

    def __init__(self, vocab: int, batch: int, seq: int, seed: int = 0):
        self.vocab, self.batch, self.seq, self.seed = vocab, batch, seq, seed
        self.index = 0

    def next_batch(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.index)
        self.index += 1
        # a learnable stream: each sequence counts up from a random start (mod vocab)
        start = torch.randint(0, self.vocab, (self.batch, 1), generator=g)
        seq = (start + torch.arange(self.seq + 1)) % self.vocab
        return seq[:, :-1], seq[:, 1:]

    def state_dict(self):
        return {"index": self.index}

    def load_state_dict(self, state):
        self.index = state["index"]


@pytest.fixture
def tiny_cfg(tmp_path) -> RunConfig:
    cfg = RunConfig(out_dir=str(tmp_path / "run"))
    m = cfg.model
    m.vocab_size, m.d_model, m.n_layers, m.n_heads, m.n_kv_heads, m.ffn_hidden, m.max_seq_len = (
        64,
        32,
        2,
        4,
        2,
        64,
        16,
    )
    cfg.data.seq_len = 16
    cfg.train.batch_size, cfg.train.steps, cfg.train.log_every = 4, 30, 5
    cfg.train.peak_flops = 1e9  # no peak measurement in tests
    cfg.train.eval_every = 0
    cfg.optim.lr = 3e-3
    cfg.schedule.warmup_steps = 5
    cfg.checkpoint.every = 10
    cfg.stability.min_history = 5
    return cfg


@pytest.fixture
def loader_cls():
    return CountingLoader
