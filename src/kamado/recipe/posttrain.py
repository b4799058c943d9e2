"""The recipe's post-training stages: SFT → DPO rounds → merge → every stage's model on held-out test prompts.

They run after pre-training when the recipe has an [sft] section with data; each resumes or is skipped when its
output is complete (`kamado.posttrain.stages`; the merged folder appears whole; held-out scores are kept per model
in `posttrain_eval.json`, so a rerun scores only what it has not scored yet).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kamado.atomic import atomic_write_text
from kamado.config import RunConfig
from kamado.data.jsonl import iter_records
from kamado.errors import CheckpointError
from kamado.posttrain.config import with_paths_from
from kamado.posttrain.heldout import heldout_scores
from kamado.posttrain.merge import merge_checkpoints
from kamado.posttrain.merge_methods import MergeSpec
from kamado.posttrain.stages import run_dpo, run_sft
from kamado.serve.load import load_for_serving, serving_dtype
from kamado.train.checkpoint import find_checkpoint

Run = Callable[[str, Callable[[], Any]], Any]


def _resolved(cfg: RunConfig, base: Path, run_dir: Path) -> RunConfig:
    """A copy whose data paths are relative to the recipe file and whose stages start from this run's models."""
    cfg = with_paths_from(cfg, base)
    cfg.sft.init = cfg.sft.init or str(run_dir)
    cfg.dpo.init = cfg.dpo.init or str(run_dir / "sft")
    cfg.tokenizer.path = cfg.tokenizer.path or str(run_dir / "tokenizer")
    return cfg


def _merge(cfg: RunConfig, run_dir: Path, rounds: list[Path]) -> Path:
    """linear / slerp: the SFT model and the last DPO round's policy. Methods on task vectors (task arithmetic,
    TIES, DARE, Model Stock): the DPO rounds' policies as task vectors from the SFT model (the base)."""
    out = run_dir / "merged"
    if not find_done(out):
        m = cfg.merge
        pair = m.method in ("linear", "slerp")
        spec = MergeSpec(
            method=m.method,
            models=(str(run_dir / "sft"), str(rounds[-1])) if pair else tuple(map(str, rounds)),
            base=None if pair else str(run_dir / "sft"),
            weights=tuple(m.weights) if m.weights and m.method != "slerp" else None,
            t=m.t if m.method == "slerp" else None,
            density=m.density if m.method in ("ties", "dare_linear", "dare_ties") else None,
            seed=m.seed if m.method.startswith("dare") else None,
        )
        merge_checkpoints(spec, out)
    return out


def find_done(path: Path) -> bool:
    try:
        find_checkpoint(path)
    except CheckpointError:
        return False
    return True


def _scores(cfg: RunConfig, run_dir: Path, models: list[tuple[str, Path]]) -> dict[str, list[dict[str, Any]]]:
    records: dict[str, list[dict[str, Any]]] = {}
    for file in cfg.heldout.test:
        for _, r in iter_records(Path(file), text_field=None):
            task = records.setdefault(str(r.get("task", "?")), [])
            if len(task) < cfg.heldout.per_task:
                task.append(r)
    flat = [r for rs in records.values() for r in rs]
    cache = run_dir / "posttrain_eval.json"
    done: dict[str, list[dict[str, Any]]] = json.loads(cache.read_text(encoding="utf-8")) if cache.is_file() else {}
    for name, path in models:
        if name in done:
            continue
        model, tok, _ = load_for_serving(path, run_dir / "tokenizer")
        done[name] = heldout_scores(model, tok, flat, cfg.heldout.max_new_tokens, serving_dtype("auto", "cpu"))
        atomic_write_text(cache, json.dumps(done, indent=1, ensure_ascii=False))
    return {name: done[name] for name, _ in models}


def posttrain_stages(cfg: RunConfig, base: Path, run_dir: Path, run: Run) -> dict[str, Any]:
    """Run the post-training stages through `run(name, fn)` (the recipe's timer); the report's numbers."""
    cfg = _resolved(cfg, base, run_dir)
    out: dict[str, Any] = {}
    out["sft"] = run("sft", lambda: run_sft(cfg, run_dir / "sft"))
    models: list[tuple[str, Path]] = [("pre-trained", run_dir), ("SFT", run_dir / "sft")]
    if cfg.dpo.pairs or cfg.dpo.prompts:
        out["dpo"] = run("dpo", lambda: run_dpo(cfg, run_dir / "dpo"))
        models += [(f"DPO round {r['round']}", run_dir / "dpo" / f"round_{r['round']}") for r in out["dpo"]]
        if cfg.merge.method:
            rounds = [path for name, path in models if name.startswith("DPO")]
            merged = run("merge", lambda: _merge(cfg, run_dir, rounds))
            what = "SFT + last DPO round" if cfg.merge.method in ("linear", "slerp") else "DPO rounds over SFT"
            models.append((f"merged ({cfg.merge.method}: {what})", merged))
    if cfg.heldout.test:
        out["heldout"] = run("post-training eval", lambda: _scores(cfg, run_dir, models))
    out["models"] = [(name, str(path)) for name, path in models]
    return out


def posttrain_section(post: dict[str, Any]) -> list[str]:
    """Markdown: SFT data and loss, each DPO round's pairs and rewards, the held-out table by stage."""
    parts = ["## Post-training (SFT → DPO rounds → merge)", ""]
    sft = post.get("sft")
    if sft:
        d = sft["data"]
        skipped = ", ".join(f"{k} {v}" for k, v in d["skipped"].items()) or "none"
        parts += [
            f"SFT: {d['conversations']} conversations ({d['trained_tokens']:,} trained tokens, about "
            f"{d['epochs']} epochs in {sft['step']} steps); skipped: {skipped}. Curves: `sft/metrics.jsonl`.",
            "",
        ]
    if post.get("dpo"):
        parts += [
            "| DPO round | on-policy pairs | off-policy pairs | skipped | reward accuracy before → after "
            "| reward margin before → after |",
            "|---|---|---|---|---|---|",
        ]
        for r in post["dpo"]:
            p, b, a = r["pairs"], r["before"], r["after"]
            skipped = sum(p["skipped"].values()) + sum(p["on_policy_prompts_without_pair"].values())
            parts += [
                f"| {r['round']} | {p['on_policy']} | {p['off_policy']} | {skipped} | "
                f"{b['reward_accuracy']:.2f} → {a['reward_accuracy']:.2f} | "
                f"{b['reward_margin']:.3f} → {a['reward_margin']:.3f} |"
            ]
        parts += ["", "Skipped = pairs refused (see each round's `pairs_report.json`) + prompts with no pair.", ""]
    table = post.get("heldout")
    if table:
        names = list(table)
        tasks = [r["task"] for r in next(iter(table.values()))]
        by = {n: {r["task"]: r for r in rows} for n, rows in table.items()}
        parts += ["### Held-out test splits (jaster-style prompts, greedy)", ""]
        parts += ["| task | metric | n | " + " | ".join(names) + " | chance |"]
        parts += ["|---" * (len(names) + 4) + "|"]
        for t in tasks:
            first = by[names[0]][t]
            chance = "—" if first["chance"] is None else f"{first['chance']:.3f}"
            cells = " | ".join(f"{by[n][t]['score']:.3f}" for n in names)
            parts += [f"| {t} | {first['metric'] or 'mean of tasks'} | {first['n']} | {cells} | {chance} |"]
        parts += [
            "",
            "Scores: exact match, char F1 (QA/RC) or Pearson's r (JSTS), as `kamado.eval.jaster.metrics` defines "
            "them; chance = a uniform guess among the task's labels. A tiny model barely follows instructions: read "
            "the columns against chance, not against published numbers.",
            "",
        ]
    return parts
