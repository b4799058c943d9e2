"""Check an exported Hugging Face folder against the kamado model it came from: logits and greedy tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from kamado.model.generate import SamplingParams, generate
from kamado.model.transformer import Transformer


@torch.inference_mode()
def compare_with_transformers(model: Transformer, hf_dir: Path, ids: list[int], new_tokens: int = 16) -> dict[str, Any]:
    """Load `hf_dir` with stock transformers (no remote code) in float32; compare the logits on `ids` and
    `new_tokens` greedy tokens after the first 16 of them (no early stop on either side)."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    ours = model.float().eval()
    x = torch.tensor([ids], device=ours.lm_head.weight.device)
    diff = float((ours(x).float() - hf(x).logits.float()).abs().max())
    prompt = ids[: min(16, len(ids))]
    n = max(1, min(new_tokens, ours.cfg.max_seq_len - len(prompt)))
    mine = generate(ours, prompt, SamplingParams(n, 0.0))
    theirs = hf.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        max_new_tokens=n,
        min_new_tokens=n,
        do_sample=False,
        pad_token_id=hf.config.pad_token_id,
    )[0, len(prompt) :].tolist()
    return {"max_abs_logit_diff": diff, "greedy_equal": mine == theirs, "new_tokens": n, "tokens": len(ids)}
