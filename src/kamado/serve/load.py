"""Load a trained model and its tokenizer for serving, from a run folder or one checkpoint folder."""

from __future__ import annotations

from pathlib import Path

import torch

from kamado.errors import CheckpointError
from kamado.model.transformer import Transformer
from kamado.serve.weights import can_pack
from kamado.tokenizer import Tokenizer
from kamado.train.checkpoint import load_model


def load_for_serving(
    path: str | Path, tokenizer: str | Path | None = None, device: str = "cpu"
) -> tuple[Transformer, Tokenizer, str]:
    """(model in eval mode on `device`, tokenizer, a model name for APIs: the run folder's name)."""
    model, found = load_model(path)
    tok_dir = Path(tokenizer) if tokenizer else found.parent.parent / "tokenizer"
    tok = Tokenizer.load(tok_dir)
    if tok.vocab_size > model.cfg.vocab_size:
        raise CheckpointError(
            f"{tok_dir}: the tokenizer has {tok.vocab_size} ids but the model's embedding has {model.cfg.vocab_size}"
        )
    return model.to(torch.device(device)), tok, found.parent.parent.name


def serving_dtype(name: str, device: str) -> torch.dtype:
    """`--dtype auto`: bf16 where the hardware runs it fast (a CUDA GPU with bf16, a CPU with oneDNN bf16: ~3x the
    float32 decode speed on the 2-core box, LOG.md), else float32."""
    if name != "auto":
        return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if can_pack(torch.device("cpu"), torch.bfloat16) else torch.float32
