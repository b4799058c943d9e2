"""`kamado experiment dpo-mix`: how much of DPO's data should be on-policy? (PLaMo-100B §5 leaves the mix open.)

From one SFT model, DPO runs that differ only in `dpo.on_policy_fraction` (0, 0.25, 0.5, 0.75, 1 by default) ×
seeds, each with the same number of pairs per round, rounds and steps: the recipe's own `run_dpo`, nothing
re-implemented. On-policy pairs are sampled from the current policy and judged by the recipe's verifiable scorer
(right label > wrong label > malformed); off-policy pairs are the real GPT-4-judged Japanese Vicuna QA pairs. Every
run's last policy, and the SFT model as the reference row, is scored on the same held-out jaster-style test prompts
(`kamado.posttrain.heldout`) — and on the judge benchmarks when a judge endpoint is given.

The one decision a reader would question: the pair count is held equal by construction (`run_dpo` fills what the
on-policy sampler could not find with off-policy pairs), so the fraction a run *asked for* and the share it *got*
can differ. Both are recorded; the page shows the share actually trained on.

The SFT model is `--base RUN` (a `kamado run recipes/tiny.toml` folder with `sft/`), or made once into OUT/base by
the tiny recipe with its evaluation stages off (`--quick`: shrunk to seconds). Runs are independent processes
(`--workers`), each in OUT/runs/<name>/; a finished run (its `result.json`) is skipped on rerun, and a killed one
resumes inside `run_dpo` (finished rounds are kept).
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kamado.atomic import atomic_write_text
from kamado.errors import ConfigError
from kamado.experiments.stability import finished_result

ROOT = Path(__file__).resolve().parents[3]
RECIPE = ROOT / "recipes" / "tiny.toml"
# Stages of the tiny recipe the base model does not need: DPO, merge, held-out table, jaster, pfgen, judge.
NO_EVAL = ['--dpo.pairs=[]', '--dpo.prompts=[]', '--heldout.test=[]', '--jaster.data=""', '--pfgen.data=""',
           "--judge.benches=[]"]  # fmt: skip
QUICK_SFT = ["--sft.train.steps=12", "--sft.train.batch_size=4", "--sft.train.seq_len=512"]


@dataclass
class MixGrid:
    """The runs: fractions × seeds, and the DPO and held-out settings every run shares."""

    fractions: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    seeds: list[int] = field(default_factory=lambda: [0])
    rounds: int = 2  # the tiny recipe's DPO as it is
    pairs_per_round: int = 48
    steps: int = 24  # DPO steps per round
    samples_per_prompt: int = 4
    max_new_tokens: int = 16  # on-policy answers
    per_task: int = 30  # held-out prompts per task (samples/posttrain/test.jsonl has 30 of each of 12 tasks)
    heldout_max_new_tokens: int = 16
    judge_url: str = ""  # judge benchmarks only with an endpoint (and its model name)
    judge_model: str = ""
    judge_benches: list[str] = field(default_factory=lambda: ["ja_mt_bench", "rakuda"])

    @staticmethod
    def quick() -> MixGrid:
        return MixGrid(rounds=1, pairs_per_round=6, steps=2, samples_per_prompt=2, max_new_tokens=4, per_task=2,
                       heldout_max_new_tokens=4)  # fmt: skip

    def runs(self) -> list[dict[str, Any]]:
        sft = [{"name": "sft", "fraction": None, "seed": None}]
        return sft + [{"name": f"f{f:g}_s{s}", "fraction": f, "seed": s} for f in self.fractions for s in self.seeds]

    def dpo_overrides(self) -> list[str]:
        return [f"--dpo.rounds={self.rounds}", f"--dpo.pairs_per_round={self.pairs_per_round}",
                f"--dpo.train.steps={self.steps}", f"--dpo.samples_per_prompt={self.samples_per_prompt}",
                f"--dpo.max_new_tokens={self.max_new_tokens}", f"--heldout.per_task={self.per_task}",
                f"--heldout.max_new_tokens={self.heldout_max_new_tokens}"]  # fmt: skip


def build_base(out: Path, quick: bool) -> Path:
    """The shared SFT model into out/base, once (skipped when base/sft holds a checkpoint). Full: the tiny recipe
    with its DPO and evaluation stages off. Quick: the stability experiment's quick pre-training run (its data and
    config, 24 steps of a 2-layer model) with a context of 512 so the prompts fit, then 12 steps of the recipe's SFT."""
    from kamado.config import load_config
    from kamado.recipe.posttrain import find_done

    base = out / "base"
    if find_done(base / "sft"):
        return base
    if not quick:
        from kamado.recipe.pipeline import run_recipe

        run_recipe(load_config(RECIPE, [*NO_EVAL, f'--out_dir="{base}"', '--name="dpo-mix-base"']), RECIPE)
        return base
    from kamado.experiments.stability import Grid, prepare_data
    from kamado.experiments.stability import run_config as pretrain_config
    from kamado.posttrain.config import with_paths_from
    from kamado.posttrain.stages import copy_tokenizer, run_sft
    from kamado.train.pretrain import build_trainer

    grid = Grid.quick()
    shards = prepare_data(out / "base_data", grid)
    if not find_done(base):
        run = {"name": "dpo-mix-base", "qk_norm": True, "z_loss": True, "lr": 3e-3, "seed": 0}
        cfg = pretrain_config(run, grid, shards, base)
        cfg.model.max_seq_len = 512
        cfg.stability.enabled = True
        build_trainer(cfg, progress=False, tensorboard=False).fit()
    copy_tokenizer(out / "base_data" / "data" / "tokenizer", base)
    sft = with_paths_from(load_config(RECIPE, QUICK_SFT), RECIPE.parent)
    sft.sft.init, sft.tokenizer.path = str(base), str(base / "tokenizer")
    run_sft(sft, base / "sft", progress=False)
    return base


def check_base(base: Path) -> Path:
    from kamado.recipe.posttrain import find_done

    if not find_done(base / "sft") or not (base / "tokenizer" / "tokenizer.json").is_file():
        raise ConfigError(f"--base {base}: needs sft/ with a checkpoint and tokenizer/ (a `kamado run` folder)")
    return base


def run_config(run: dict[str, Any], grid: MixGrid, base: Path, out: Path) -> Any:
    """The tiny recipe's [dpo] and [heldout] (data paths resolved), starting from base/sft, with this run's mix."""
    from kamado.config import load_config
    from kamado.posttrain.config import with_paths_from

    cfg = with_paths_from(load_config(RECIPE, grid.dpo_overrides()), RECIPE.parent)
    cfg.out_dir, cfg.tokenizer.path, cfg.dpo.init = str(out), str(base / "tokenizer"), str(base / "sft")
    if run["fraction"] is not None:
        cfg.dpo.on_policy_fraction, cfg.dpo.train.seed = run["fraction"], run["seed"]
    if grid.judge_url:
        cfg.judge.judge_url, cfg.judge.judge_model, cfg.judge.benches = (
            grid.judge_url,
            grid.judge_model,
            grid.judge_benches,
        )
    cfg.validate()
    return cfg


def heldout_records(cfg: Any) -> list[dict[str, Any]]:
    """The first `heldout.per_task` test prompts of each task, in file order (as the recipe's table takes them)."""
    from kamado.data.jsonl import iter_records

    by_task: dict[str, list[dict[str, Any]]] = {}
    for file in cfg.heldout.test:
        for _, r in iter_records(Path(file), text_field=None):
            task = by_task.setdefault(str(r.get("task", "?")), [])
            if len(task) < cfg.heldout.per_task:
                task.append(r)
    return [r for rs in by_task.values() for r in rs]


def last_tenth(metrics: Path) -> dict[str, float]:
    """Mean loss, reward margin and reward accuracy over the last tenth of a round's logged steps."""
    rows = [json.loads(x) for x in metrics.read_text(encoding="utf-8").splitlines() if '"reward_margin"' in x]
    tail = rows[-max(1, len(rows) // 10) :]
    return {k: sum(r[k] for r in tail) / len(tail) for k in ("loss", "reward_margin", "reward_accuracy")}


def run_one(args: tuple[dict[str, Any], dict[str, Any], str, str]) -> dict[str, Any]:
    """One run, in a worker process. A run that stops on a KamadoError (bad data, a refused pair...) is returned as
    {name, fraction, seed, error} and written to error.json, not result.json: the other runs go on, the page names
    it, and a rerun tries it again."""
    from kamado.errors import KamadoError

    try:
        return _run_one(args)
    except KamadoError as e:
        run, root = args[0], Path(args[3])
        failed = {**args[0], "error": f"{type(e).__name__}: {e}"}
        (root / "runs" / run["name"]).mkdir(parents=True, exist_ok=True)
        atomic_write_text(root / "runs" / run["name"] / "error.json", json.dumps(failed, indent=1, ensure_ascii=False))
        return failed


def _run_one(args: tuple[dict[str, Any], dict[str, Any], str, str]) -> dict[str, Any]:
    """DPO with this run's mix (none for the SFT row), then the held-out scores, into result.json."""
    run, grid_dict, base_dir, root = args
    grid, base = MixGrid(**grid_dict), Path(base_dir)
    out = Path(root) / "runs" / run["name"]
    done = out / "result.json"
    finished = finished_result(out)
    if finished is not None:
        return finished
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    from kamado.posttrain.heldout import heldout_scores
    from kamado.posttrain.stages import run_dpo
    from kamado.serve.load import load_for_serving, serving_dtype

    t0 = time.perf_counter()
    cfg = run_config(run, grid, base, out)
    result = {**run, "base": str(base)}
    model_dir = base / "sft"
    if run["fraction"] is not None:
        rounds = run_dpo(cfg, out / "dpo", progress=False)
        model_dir = out / "dpo" / f"round_{grid.rounds}"
        result["pairs_on_policy"] = sum(r["pairs"]["on_policy"] for r in rounds)
        result["pairs_off_policy"] = sum(r["pairs"]["off_policy"] for r in rounds)
        result["rounds"] = [
            {**r["pairs"], "before": r["before"], "after": r["after"],
             "train_last_tenth": last_tenth(out / "dpo" / f"round_{r['round']}" / "metrics.jsonl")}
            for r in rounds
        ]  # fmt: skip
    model, tok, _ = load_for_serving(model_dir, base / "tokenizer")
    rows = heldout_scores(model, tok, heldout_records(cfg), grid.heldout_max_new_tokens, serving_dtype("auto", "cpu"))
    result |= {"model": str(model_dir), "heldout": rows, "heldout_mean": rows[-1]["score"]}
    if grid.judge_url:
        from kamado.posttrain.stages import copy_tokenizer
        from kamado.recipe.evaluation import judge_stage

        copy_tokenizer(base / "tokenizer", out)  # judge_stage reads OUT/tokenizer and writes OUT/eval/judge
        result["judge"] = judge_stage(cfg, RECIPE.parent, out, [(run["name"], str(model_dir))])
    result["seconds"] = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(done, json.dumps(result, indent=1, ensure_ascii=False))
    return result


def run_grid(out: Path, grid: MixGrid, base: Path, workers: int) -> list[dict[str, Any]]:
    jobs = [(run, asdict(grid), str(base), str(out)) for run in grid.runs()]
    if workers <= 1:
        return [run_one(j) for j in jobs]
    import multiprocessing as mp

    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        return list(pool.map(run_one, jobs))
