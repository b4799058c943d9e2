"""`kamado corpus run`: WARC files → Japanese Markdown → quality filters → exact + MinHash dedup → uniform shards.

```
stage "extract" (tasks)      WARC pages → kana prefilter → Markdown → language ID → quality   → work/extracted/
stages "dedup_*"             signatures → exact dups / buckets → clusters → filter          → work/deduped/
reshard (one process)        uniform gzip JSONL shards + manifest.json                       → shards/
```

Each datatrove stage runs through an executor with its own logging folder under `work/logs/<stage>`, so a killed
run started again with the same command skips the tasks that finished (datatrove's completion markers) and redoes
the rest; the reshard stage rewrites its shards deterministically (see `kamado.corpus.reshard`). The executor is
local processes, Ray, or Slurm job arrays; on Slurm the command submits the stages and then itself, to finish the
corpus once they are done (`kamado.corpus.slurm`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from kamado.atomic import atomic_write_text
from kamado.corpus.config import CorpusConfig
from kamado.corpus.report import warnings, write_corpus_report
from kamado.corpus.reshard import reshard
from kamado.corpus.slurm import check_no_jobs_in_flight, record_jobs, submit_after, task_seconds
from kamado.errors import ConfigError, DataError
from kamado.faults import failpoint

Stage = tuple[str, list[Any], int]


def extract_stage(cfg: CorpusConfig, warc_dir: str, out_folder: str) -> Stage:
    from datatrove.pipeline.writers import JsonlWriter

    from kamado.corpus.extract import MarkdownExtractor
    from kamado.corpus.langid import JapaneseLanguageFilter, KanaPrefilter
    from kamado.corpus.quality_classifier import QualityClassifier
    from kamado.corpus.quality_filter import JapaneseQualityFilter
    from kamado.corpus.reader import WarcPageReader

    reader = WarcPageReader(warc_dir, glob_pattern="*.warc*")
    reader.add_file_path = True  # the manifest lists the source WARC of every document
    steps = [
        reader,
        KanaPrefilter(cfg.kana_min_count, cfg.kana_min_fraction),
        MarkdownExtractor(timeout_s=cfg.extract_timeout_s, fallback=cfg.extract_fallback),
        JapaneseLanguageFilter(cfg.language_threshold),
        JapaneseQualityFilter(cfg.quality),
    ]
    if cfg.quality.classifier.enabled:  # scores every document (metadata["quality_score"]); drops below threshold
        steps.append(QualityClassifier(cfg.quality.classifier, filter=cfg.quality.classifier.filter))
    steps.append(JsonlWriter(out_folder, compression="gzip"))
    return "extract", steps, cfg.tasks


def _executor(cfg: CorpusConfig, steps: list[Any], tasks: int, logging_dir: str, after: Any = None) -> Any:
    """The stage's datatrove executor; `after` (Slurm): the previous stage's executor, whose jobs it waits for."""
    if cfg.executor == "slurm":
        from datatrove.executor.slurm import SlurmPipelineExecutor

        s = cfg.slurm
        return SlurmPipelineExecutor(
            steps,
            tasks=tasks,
            workers=min(cfg.workers, tasks),
            time=s.time,
            partition=s.partition,
            cpus_per_task=s.cpus_per_task,
            mem_per_cpu_gb=s.mem_per_cpu_gb,
            qos=s.qos,
            env_command=s.env_command or None,
            job_name=f"kamado-{Path(logging_dir).name}",
            logging_dir=logging_dir,
            depends=after,
        )
    if cfg.executor == "ray":
        from datatrove.executor.ray import RayPipelineExecutor

        return RayPipelineExecutor(steps, tasks=tasks, workers=min(cfg.workers, tasks), logging_dir=logging_dir)
    from datatrove.executor import LocalPipelineExecutor

    # On Linux the workers are forked: they start with kamado, datatrove and trafilatura already imported, where
    # datatrove's default (forkserver) imports them afresh in every stage's pool, about 1 s a stage (LOG.md,
    # 2026-12-05). kamado's commands have started no thread then but fsspec's IO loop, which a child resets.
    start = "fork" if sys.platform == "linux" else "forkserver"
    if start == "fork":  # what each worker would load for itself (a model, tables: 0.6-1 s each) is loaded once
        for step in steps:  # here, and every worker of every stage inherits it
            if hasattr(step, "warm_up"):
                step.warm_up()
    return LocalPipelineExecutor(
        steps, tasks=tasks, workers=min(cfg.workers, tasks), logging_dir=logging_dir, start_method=start
    )


def stage_stats(logging_dir: Path) -> dict[str, dict[str, int]]:
    """{step name: {stat: total}} summed over a finished stage's tasks (datatrove's `stats/<task>.json`).

    Not datatrove's `stats.json`: it holds only the tasks the latest run did, so after a restart (a task failed or
    was killed) it would count just the tasks that were redone, and the report would miss the others."""
    out: dict[str, dict[str, int]] = {}
    for path in sorted((logging_dir / "stats").glob("*.json")):
        for step in json.loads(path.read_text()):
            totals = out.setdefault(step["name"].split(": ", 1)[-1], {})
            for k, v in step["stats"].items():
                totals[k] = totals.get(k, 0) + (v["total"] if isinstance(v, dict) else v)
    return out


_NOT_OUTPUT_SETTINGS = ("workers", "executor", "ray_address", "slurm")  # where and how fast, not what comes out


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out |= _flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
    return out


def check_same_settings(cfg: CorpusConfig, warc_dir: Path, work: Path) -> None:
    """A restart must use the settings the work folder was made with: datatrove's completion markers say which
    tasks finished, not with which settings, so mixing (another `tasks`, another threshold) would silently mix
    outputs. The first run records them in `work/settings.json`; a later run with others is a ConfigError."""
    settings = {k: v for k, v in asdict(cfg).items() if k not in _NOT_OUTPUT_SETTINGS}
    settings["warc_dir"] = str(warc_dir.resolve())
    path = work / "settings.json"
    if path.is_file():
        before = _flat(json.loads(path.read_text(encoding="utf-8")))
        now = _flat(json.loads(json.dumps(settings)))
        changed = [
            f"{k}: {before.get(k)!r} → {now.get(k)!r}" for k in sorted(before | now) if before.get(k) != now.get(k)
        ]
        if changed:
            raise ConfigError(
                f"{work.parent} was started with other settings ({'; '.join(changed)}); run with the same ones to "
                f"resume, or use a new --out"
            )
    else:
        work.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(settings, indent=1, ensure_ascii=False) + "\n")


def run_corpus(
    cfg: CorpusConfig, warc_dir: str | Path, out_dir: str | Path, command: Sequence[str] | None = None
) -> dict[str, Any]:
    """Run every stage (skipping tasks a killed earlier run finished); returns the summary also written to
    `out_dir/corpus_summary.json`. On Slurm, `command` is this very command line: when any task is left, the stages
    are submitted and so is `command` after them (it then finds every task done and finishes the corpus here), and
    the summary returned is `{"submitted": job ids}`."""
    cfg.validate()
    warc_dir, out_dir = Path(warc_dir), Path(out_dir)
    if not warc_dir.is_dir() or not any(warc_dir.rglob("*.warc*")):
        raise DataError(f"{warc_dir}: no .warc or .warc.gz files found")
    if cfg.executor == "slurm" and command is None:
        raise ConfigError("executor 'slurm' is for `kamado corpus run`; a recipe's corpus stage runs local or ray")
    if cfg.executor == "ray":
        import ray

        if not ray.is_initialized():
            ray.init(address=cfg.ray_address or None)
    seconds: dict[str, float] = {}
    stats: dict[str, dict[str, dict[str, int]]] = {}
    work = out_dir / "work"
    check_same_settings(cfg, warc_dir, work)
    if cfg.executor == "slurm":
        check_no_jobs_in_flight(work)  # a second submission would run the same tasks twice
    submitted: list[Any] = []  # Slurm: each stage's executor, in order (job_id -1: nothing was left to run)

    def run_stage(name: str, steps: list[Any], tasks: int) -> None:
        logs = work / "logs" / name
        failpoint("corpus.before_stage")
        start = time.perf_counter()
        executor = _executor(cfg, steps, tasks, str(logs), submitted[-1] if submitted else None)
        try:
            executor.run()
        except subprocess.CalledProcessError as e:  # datatrove's sbatch call; sbatch printed its reason above
            message = f"sbatch refused the {name} stage (exit status {e.returncode}; its message is above)"
            raise ConfigError(message) from None
        if cfg.executor == "slurm":
            submitted.append(executor)
            seconds[name] = task_seconds(logs)  # wall time is the scheduler's; the tasks' own time is recorded
        else:
            seconds[name] = time.perf_counter() - start
        stats[name] = stage_stats(logs)

    run_stage(*extract_stage(cfg, str(warc_dir), str(work / "extracted")))
    deduped = work / "deduped"
    # nothing to deduplicate when every page was dropped (on Slurm, extraction may not have run yet)
    if cfg.executor == "slurm" or any((work / "extracted").glob("*.jsonl.gz")):
        from kamado.corpus.dedup import dedup_stages

        folders = str(work / "extracted"), str(work / "dedup"), str(deduped)
        for stage in dedup_stages(cfg.dedup, *folders, cfg.tasks, empty_ok=cfg.executor == "slurm"):
            run_stage(*stage)
    jobs = [int(e.job_id) for e in submitted if e.job_id not in (None, -1)]
    if jobs:
        assert command is not None
        jobs.append(submit_after(cfg, jobs[-1], command, work / "logs"))
        record_jobs(work, jobs)
        return {"submitted": jobs}
    start = time.perf_counter()
    manifest = reshard(deduped, out_dir / "shards", cfg.reshard)
    seconds["reshard"] = time.perf_counter() - start
    summary = {
        "executor": cfg.executor,
        "workers": 1 if cfg.executor == "slurm" else min(cfg.workers, cfg.tasks),
        "stage_seconds": seconds,
        "stats": stats,
        "documents_out": manifest["documents"],
    }
    atomic_write_text(out_dir / "corpus_summary.json", json.dumps(summary, ensure_ascii=False, indent=2) + "\n")
    write_corpus_report(out_dir, summary)
    for line in warnings(summary):
        print(f"kamado: warning: {line} (see {out_dir / 'corpus_report.md'})", file=sys.stderr)
    return summary
