"""The run the export tests share: a byte-level BPE tokenizer learned from the samples and a random model shaped to
expose mapping mistakes (see tests/serve/test_export.py), saved as RUN/tokenizer + RUN/checkpoints/step_00000007."""

from __future__ import annotations

from pathlib import Path

import torch

from kamado.config import ModelConfig, RunConfig, TokenizerConfig, to_dict
from kamado.data.jsonl import iter_jsonl_texts
from kamado.model.transformer import Transformer
from kamado.tokenizer import Tokenizer
from kamado.tokenizer.train import train_tokenizer
from kamado.train.checkpoint import save_checkpoint

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
THETA, EPS = 1000.0, 1e-3  # not transformers' defaults: a key it does not read would fall back and show


def make_run(run: Path) -> Path:
    """GQA (4 heads, 2 KV heads), non-unit norm weights, 3 embedding rows more than the tokenizer has ids."""
    texts = iter_jsonl_texts([SAMPLES / "ja_aozora.jsonl.gz", SAMPLES / "en_web.jsonl.gz"])
    train_tokenizer(texts, run / "tokenizer", TokenizerConfig(vocab_size=1000, max_train_chars=1_000_000))
    vocab = Tokenizer.load(run / "tokenizer").vocab_size + 3
    cfg = ModelConfig(vocab, 64, 2, 4, 2, 96, 64, rope_theta=THETA, norm_eps=EPS, init_std=0.1)
    torch.manual_seed(0)
    model = Transformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
    save_checkpoint(run / "checkpoints", 7, model, None, {"config": to_dict(RunConfig(model=cfg))})
    return run
