"""The SFT stage and the DPO rounds: from a checkpoint, through the run's trainer, to a run folder that the next
stage, `kamado chat`/`serve`/`export` and evaluation load like any other (checkpoints + a copy of the tokenizer).

Each stage resumes: the trainer continues from the stage folder's newest checkpoint, and a DPO round's pairs (with
their reference log-probs) are written once, before its training, then read back, so a killed round restarts with
the same pairs. A finished round leaves `round.json`; a rerun skips it.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from kamado.atomic import atomic_write_text
from kamado.config import RunConfig
from kamado.data.jsonl import iter_records
from kamado.errors import ConfigError
from kamado.faults import failpoint
from kamado.model.transformer import Transformer
from kamado.posttrain.config import stage_run_config
from kamado.posttrain.dpo import DPOTrainer, PairLoader, draw_pairs, pair_metrics, prepare_pairs, reference_logps
from kamado.posttrain.judge import make_judge
from kamado.posttrain.onpolicy import sample_pairs
from kamado.posttrain.sft import PackedConversations, read_conversations
from kamado.tokenizer.tokenizer import Tokenizer
from kamado.train.checkpoint import find_checkpoint, load_model
from kamado.train.pretrain import default_callbacks
from kamado.train.trainer import Trainer


def tokenizer_dir(cfg: RunConfig, init: Path) -> Path:
    """`tokenizer.path`, or the `tokenizer` folder of the run the checkpoint `init` belongs to."""
    path = Path(cfg.tokenizer.path) if cfg.tokenizer.path else init.parent.parent / "tokenizer"
    if not (path / "tokenizer.json").is_file():
        raise ConfigError(f"no tokenizer at {path}: set tokenizer.path to the folder `kamado tokenizer train` wrote")
    return path


def copy_tokenizer(src: Path, out_dir: Path) -> None:
    """The stage folder carries its tokenizer, so it loads on its own (`kamado chat OUT_DIR`)."""
    dest = out_dir / "tokenizer"
    if not dest.exists():
        tmp = out_dir / ".tokenizer.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(src, tmp)
        tmp.rename(dest)


def _records(paths: list[str]) -> list[dict[str, Any]]:
    return [r for p in paths for _, r in iter_records(Path(p), text_field=None)]


def run_sft(cfg: RunConfig, out_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Fine-tune `sft.init` on `sft.data` into `out_dir`; the result's `data` says what was trained on/skipped."""
    s = cfg.sft
    if not s.init or not s.data:
        raise ConfigError("sft.init (a checkpoint or run folder) and sft.data (messages JSONL files) are needed")
    init = find_checkpoint(s.init)
    tok_dir = tokenizer_dir(cfg, init)
    tok = Tokenizer.load(tok_dir)
    model, _ = load_model(init)
    run = stage_run_config(cfg, s.train, str(out_dir), model.cfg)
    convs, skipped = read_conversations(s.data, tok, run.data.seq_len, s.overlong)
    loader = PackedConversations(convs, run.data.seq_len, run.train.batch_size, s.train.seed)
    val = None
    if s.val_data:
        held, _ = read_conversations(s.val_data, tok, run.data.seq_len, s.overlong)
        n_val = -(-PackedConversations(held, run.data.seq_len, 1, seed=0).rows_per_epoch() // run.train.batch_size)

        def val() -> Any:
            held_loader = PackedConversations(held, run.data.seq_len, run.train.batch_size, seed=0)
            return (held_loader.next_batch() for _ in range(n_val))

    data = {
        "conversations": len(convs),
        "skipped": dict(skipped),
        "trained_tokens": sum(sum(c.trained[1:]) for c in convs),
        "rows_per_epoch": loader.rows_per_epoch(),
        "epochs": round(run.train.steps * run.train.batch_size / loader.rows_per_epoch(), 2),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "sft_data.json", json.dumps(data, indent=1, ensure_ascii=False))
    copy_tokenizer(tok_dir, out_dir)
    result = Trainer(run, model.train(), loader, out_dir, val, default_callbacks(out_dir, progress)).fit()
    return {"data": data, "step": result["step"], "eval": result["eval"], "init": str(init)}


def _round_pairs(
    cfg: RunConfig, k: int, model: Transformer, ref: Transformer, tok: Tokenizer, seq_len: int, progress: bool
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Round k's pairs: on-policy ones sampled from `model` and judged, the rest drawn from the off-policy pairs
    until the round has `pairs_per_round` usable ones (a drawn pair too long for the context is replaced); checked,
    encoded and given their reference log-probs (from `ref`)."""
    d = cfg.dpo
    prompts = _records(d.prompts)
    n_on = round(d.on_policy_fraction * d.pairs_per_round) if prompts else 0
    on, on_counts = (
        sample_pairs(model, tok, prompts, n_on, make_judge(d.judge), d, seed=d.train.seed * 1000 + k, progress=progress)
        if n_on
        else ([], Counter())
    )
    rng = np.random.default_rng([d.train.seed, k])
    kept, skipped = draw_pairs(on, _records(d.pairs), d.pairs_per_round, tok, seq_len, rng)
    if not kept:
        raise ConfigError(f"DPO round {k} has no usable pair (on-policy: {dict(on_counts)}; skipped: {dict(skipped)})")
    reference_logps(ref, kept, average=d.loss_type == "ipo")
    report = {
        "on_policy": sum(p.get("source") == "on_policy" for p in kept),
        "off_policy": sum(p.get("source") != "on_policy" for p in kept),
        "on_policy_prompts_without_pair": dict(on_counts),
        "skipped": dict(skipped),
    }
    return kept, report


def run_dpo(cfg: RunConfig, out_dir: Path, progress: bool = True) -> list[dict[str, Any]]:
    """`dpo.rounds` rounds into out_dir/round_K; round k+1 starts from round k's policy. Returns each round's
    summary (pairs, reward accuracy and margin on its pairs before and after)."""
    d = cfg.dpo
    if not d.init or not (d.pairs or d.prompts):
        raise ConfigError("dpo.init (the SFT model) and dpo.pairs and/or dpo.prompts are needed")
    sft = find_checkpoint(d.init)
    tok_dir = tokenizer_dir(cfg, sft)
    tok = Tokenizer.load(tok_dir)
    policy, summaries = sft, []
    for k in range(1, d.rounds + 1):
        rdir = out_dir / f"round_{k}"
        if (rdir / "round.json").is_file():
            summaries.append(json.loads((rdir / "round.json").read_text(encoding="utf-8")))
            policy = find_checkpoint(rdir)
            continue
        model, _ = load_model(policy)
        run = stage_run_config(cfg, d.train, str(rdir), model.cfg)
        pairs_file = rdir / "pairs.jsonl"
        if pairs_file.is_file():  # a resumed round: the same pairs, reference log-probs included
            kept, _ = prepare_pairs(_records([str(pairs_file)]), tok, run.data.seq_len)
            report = json.loads((rdir / "pairs_report.json").read_text(encoding="utf-8"))
        else:
            ref = model if d.reference == "previous" or policy == sft else load_model(sft)[0]
            kept, report = _round_pairs(cfg, k, model, ref, tok, run.data.seq_len, progress)
            rdir.mkdir(parents=True, exist_ok=True)
            lines = "".join(
                json.dumps({k: v for k, v in p.items() if not k.startswith("_")}, ensure_ascii=False) + "\n"
                for p in kept
            )
            atomic_write_text(rdir / "pairs_report.json", json.dumps(report, indent=1, ensure_ascii=False))
            atomic_write_text(pairs_file, lines)  # last: its presence says the round's pairs are complete
            failpoint("posttrain.after_round_pairs")
        before = pair_metrics(model, kept, d)
        trainer = DPOTrainer(
            run,
            model.train(),
            PairLoader(kept, run.train.batch_size, d.train.seed),
            rdir,
            None,
            default_callbacks(rdir, progress),
        )
        trainer.fit()
        copy_tokenizer(tok_dir, rdir)
        failpoint("posttrain.before_round_record")
        summary = {
            "round": k,
            "start": str(policy),
            "pairs": report,
            "before": before,
            "after": pair_metrics(model, kept, d),
        }
        atomic_write_text(rdir / "round.json", json.dumps(summary, indent=1, ensure_ascii=False))
        summaries.append(summary)
        policy = find_checkpoint(rdir)
    return summaries
