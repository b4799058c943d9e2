"""`kamado experiment stability`: QK-Norm and Z-loss against learning rate, after Wortsman et al. (2023).

A grid of short pre-training runs on the tiny recipe's text (Aozora Bunko + English web samples, its tokenizer
settings): learning rates, log-spaced up to where an unprotected model diverges, × QK-Norm {on, off} × Z-loss
{on, off} × seeds. Each run logs its loss, the mean log Z of the output softmax (every step, from the loss) and the
largest attention logit per layer (`probes.AttentionLogitProbe`). The stability monitor is **off** for the grid —
a skipped or rolled-back spike would hide the divergence being measured. Weight decay is 0 by default: Wortsman et
al. find output-logit divergence where nothing else holds log Z down.

Runs are independent processes (`--workers`), each in its own folder; a finished run (its `result.json`) is
skipped on rerun, and a killed one resumes from its last checkpoint (the trainer's own resume).
"""

from __future__ import annotations

import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kamado.atomic import atomic_write_text
from kamado.completion import read_record, write_record

ROOT = Path(__file__).resolve().parents[3]
CORPUS = [ROOT / "samples/ja_aozora.jsonl.gz", ROOT / "samples/en_web.jsonl.gz"]


@dataclass
class Grid:
    lrs: list[float] = field(default_factory=lambda: [1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0])
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    steps: int = 300
    batch_size: int = 16
    seq_len: int = 128
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    ffn_hidden: int = 352
    vocab_size: int = 8000  # the tiny recipe's tokenizer
    z_loss: float = 1e-4  # PaLM's coefficient, when on
    weight_decay: float = 0.0
    warmup_fraction: float = 0.1

    @staticmethod
    def quick() -> Grid:
        return Grid(lrs=[1e-3, 1e-1, 1.0], seeds=[0], steps=24, batch_size=8, seq_len=64, d_model=64, n_layers=2,
                    ffn_hidden=176, vocab_size=2000)  # fmt: skip

    def runs(self) -> list[dict[str, Any]]:
        out = []
        for qk_norm in (True, False):
            for z in (True, False):
                for lr in self.lrs:
                    for seed in self.seeds:
                        name = f"qk{int(qk_norm)}_z{int(z)}_lr{lr:g}_s{seed}"
                        out.append({"name": name, "qk_norm": qk_norm, "z_loss": z, "lr": lr, "seed": seed})
        return out


def variant(run: dict[str, Any]) -> str:
    return f"QK-Norm {'on' if run['qk_norm'] else 'off'}, Z-loss {'on' if run['z_loss'] else 'off'}"


def prepare_data(out: Path, grid: Grid) -> Path:
    """Tokenizer + shards of the tiny recipe's text under out/data (once; completion records make it resumable)."""
    from kamado.config import TokenizerConfig
    from kamado.data.jsonl import iter_jsonl_texts
    from kamado.data.tokenize import tokenize_files
    from kamado.tokenizer import Tokenizer
    from kamado.tokenizer.train import train_tokenizer

    tok_dir, shards = out / "data" / "tokenizer", out / "data" / "shards"
    if read_record(tok_dir) is None:
        train_tokenizer(iter_jsonl_texts(CORPUS), tok_dir, TokenizerConfig(vocab_size=grid.vocab_size))
    if read_record(shards) is None:
        tokenize_files(CORPUS, Tokenizer.load(tok_dir), shards, progress=False)
        write_record(shards, {"tokenizer": str(tok_dir)})
    return shards


def run_config(run: dict[str, Any], grid: Grid, shards: Path, out: Path) -> Any:
    from kamado.config import RunConfig, SourceConfig

    cfg = RunConfig(name=run["name"], out_dir=str(out))
    m = cfg.model
    m.vocab_size, m.d_model, m.n_layers, m.n_heads = grid.vocab_size, grid.d_model, grid.n_layers, grid.n_heads
    m.n_kv_heads, m.ffn_hidden, m.max_seq_len, m.qk_norm = (
        grid.n_kv_heads,
        grid.ffn_hidden,
        grid.seq_len,
        run["qk_norm"],
    )
    cfg.data.seq_len, cfg.data.seed = grid.seq_len, 1234 + run["seed"]
    cfg.data.sources = [SourceConfig("text", str(shards))]
    t = cfg.train
    t.steps, t.batch_size, t.seed, t.z_loss = (
        grid.steps,
        grid.batch_size,
        run["seed"],
        grid.z_loss if run["z_loss"] else 0.0,
    )
    t.log_every, t.eval_every, t.threads, t.peak_flops = 1, 0, 1, 1e9
    cfg.optim.lr, cfg.optim.weight_decay = run["lr"], grid.weight_decay
    cfg.schedule.kind, cfg.schedule.warmup_steps = "cosine", max(1, int(grid.warmup_fraction * grid.steps))
    cfg.stability.enabled = False
    cfg.checkpoint.every, cfg.checkpoint.keep_last = max(1, grid.steps // 4), 1
    cfg.validate()
    return cfg


def finished_result(run_dir: Path) -> dict[str, Any] | None:
    """A finished run's result.json (written last, atomically), or None: what makes a rerun skip a run."""
    done = run_dir / "result.json"
    if not done.is_file():
        return None
    result: dict[str, Any] = json.loads(done.read_text(encoding="utf-8"))
    return result


def run_one(args: tuple[dict[str, Any], dict[str, Any], str, str]) -> dict[str, Any]:
    """One grid run, in a worker process: train with the probes attached, then summarise into result.json."""
    run, grid_dict, shards, root = args
    grid = Grid(**grid_dict)
    out = Path(root) / "runs" / run["name"]
    done = out / "result.json"
    finished = finished_result(out)
    if finished is not None:
        return finished
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from kamado.experiments.probes import AttentionLogitProbe, ProbeLogger
    from kamado.train.pretrain import build_trainer

    cfg = run_config(run, grid, Path(shards), out)
    trainer = build_trainer(cfg, progress=False, tensorboard=False)
    probe = AttentionLogitProbe().attach(trainer.model)
    trainer.callbacks.insert(0, ProbeLogger(probe))  # before the metrics logger writes the step's row
    trainer.fit()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    tail = rows[-max(1, len(rows) // 10) :]  # the last tenth of the steps: less noise than the last step alone
    final = sum(r["loss"] for r in tail) / len(tail)
    result = {
        **run,
        "variant": variant(run),
        "first_loss": rows[0]["loss"],
        "final_loss": final if math.isfinite(final) else math.inf,
        "max_attn_logit": max(max(v for k, v in r.items() if k.startswith("attn_logit_")) for r in rows),
        "final_log_z": sum(r["log_z"] for r in tail) / len(tail),
    }
    atomic_write_text(done, json.dumps(result, indent=1))
    return result


def run_grid(out: Path, grid: Grid, workers: int) -> list[dict[str, Any]]:
    shards = prepare_data(out, grid)
    jobs = [(run, asdict(grid), str(shards), str(out)) for run in grid.runs()]
    if workers <= 1:
        return [run_one(j) for j in jobs]
    import multiprocessing as mp

    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        return list(pool.map(run_one, jobs))
