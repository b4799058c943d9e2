"""A run folder for the evaluation tests: a byte-level BPE tokenizer learned from the repo's samples and a random
model with a context long enough for jaster's prompts (2048 tokens), saved like a run."""

from pathlib import Path

import pytest
import torch

from kamado.config import ModelConfig, RunConfig, TokenizerConfig, to_dict
from kamado.data.jsonl import iter_jsonl_texts
from kamado.model.transformer import Transformer
from kamado.tokenizer import Tokenizer
from kamado.tokenizer.train import train_tokenizer
from kamado.train.checkpoint import save_checkpoint

SAMPLES = Path(__file__).resolve().parents[2] / "samples"


@pytest.fixture(scope="session")
def eval_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("eval") / "tiny-eval"
    texts = iter_jsonl_texts([SAMPLES / "ja_aozora.jsonl.gz"])
    train_tokenizer(texts, run / "tokenizer", TokenizerConfig(vocab_size=1000, max_train_chars=400_000))
    vocab = Tokenizer.load(run / "tokenizer").vocab_size
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab, 64, 2, 4, 2, 128, 2048))
    cfg = RunConfig(model=model.cfg)
    save_checkpoint(run / "checkpoints", 1, model, None, {"config": to_dict(cfg)})
    return run
