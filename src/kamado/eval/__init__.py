"""Evaluation: jaster (`jaster/`), the judge benchmarks (`judge/`), pfgen-bench (`pfgen/`), bits per character."""

import re


def slug(name: str) -> str:
    """A model's display name as a folder name: 'DPO round 1' -> 'dpo_round_1'; 'merged (linear: ...)' -> 'merged'."""
    return re.sub(r"[^a-z0-9]+", "_", name.split(" (")[0].lower()).strip("_") or "model"
