"""A small served run for the serving tests: a byte-level BPE tokenizer learned from the repo's Aozora sample and a
random model with non-unit norm weights, saved as `RUN/checkpoints/step_00000001` + `RUN/tokenizer` like a run."""

from pathlib import Path

import pytest
import torch

from kamado.config import ModelConfig, RunConfig, TokenizerConfig, to_dict
from kamado.data.jsonl import iter_texts
from kamado.model.transformer import Transformer
from kamado.tokenizer import Tokenizer
from kamado.tokenizer.train import train_tokenizer
from kamado.train.checkpoint import load_model, save_checkpoint

from .export_run import make_run

SAMPLE = Path(__file__).parents[2] / "samples" / "ja_aozora.jsonl.gz"


def random_model(vocab_size: int, max_seq_len: int = 256, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    cfg = ModelConfig(
        vocab_size=vocab_size, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=128, max_seq_len=max_seq_len
    )
    model = Transformer(cfg)
    with torch.no_grad():  # non-unit norms: a misplaced norm changes the function
        for p in model.parameters():
            if p.dim() == 1:
                p.copy_(torch.empty_like(p).uniform_(0.5, 1.5))
    return model.eval()


@pytest.fixture(scope="session")
def served_run(tmp_path_factory) -> Path:
    """RUN folder with a tokenizer (vocab 400) and one checkpoint of a random model (context 256)."""
    run = tmp_path_factory.mktemp("served") / "tiny-chat"
    texts = list(iter_texts(SAMPLE))
    train_tokenizer(texts, run / "tokenizer", TokenizerConfig(vocab_size=400, max_train_chars=400_000))
    tok = Tokenizer.load(run / "tokenizer")
    model = random_model(tok.vocab_size)
    cfg = RunConfig(out_dir=str(run))
    cfg.model = model.cfg
    save_checkpoint(run / "checkpoints", 1, model, None, {"config": to_dict(cfg)})
    return run


# The export tests' run (tests/serve/export_run.py): GQA, non-unit norms, more embedding rows than token ids.
@pytest.fixture(scope="session")
def run(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("export") / "tiny-ja")


@pytest.fixture(scope="session")
def model(run: Path) -> Transformer:
    return load_model(run)[0]


@pytest.fixture(scope="session")
def tok(run: Path) -> Tokenizer:
    return Tokenizer.load(run / "tokenizer")
