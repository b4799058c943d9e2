"""Post-training tests: a byte-level BPE tokenizer learned from the repo's Aozora sample, and small random models."""

from pathlib import Path

import pytest
import torch

from kamado.config import ModelConfig, TokenizerConfig
from kamado.data.jsonl import iter_texts
from kamado.model.transformer import Transformer
from kamado.tokenizer import Tokenizer
from kamado.tokenizer.train import train_tokenizer

SAMPLE = Path(__file__).parents[2] / "samples" / "ja_aozora.jsonl.gz"


@pytest.fixture(scope="session")
def tok_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("posttrain") / "tokenizer"
    train_tokenizer(list(iter_texts(SAMPLE)), path, TokenizerConfig(vocab_size=400, max_train_chars=300_000))
    return path


@pytest.fixture(scope="session")
def tok(tok_dir: Path) -> Tokenizer:
    return Tokenizer.load(tok_dir)


def small_model(vocab_size: int, seed: int = 0, max_seq_len: int = 128) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(
        ModelConfig(
            vocab_size=vocab_size,
            d_model=48,
            n_layers=2,
            n_heads=4,
            n_kv_heads=2,
            ffn_hidden=96,
            max_seq_len=max_seq_len,
        )
    )
