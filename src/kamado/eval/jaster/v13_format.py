"""jaster in llm-jp-eval v1.3's preprocessed layout: `DIR/{train,dev,test}/TASK.json`, one file per split and task.

Each file holds what v1.3's preprocessing writes: `instruction`, `output_length`, `metrics`, `few_shots` (empty:
v1.3 draws the shots from the train split at evaluation time), `label_list` and `samples` ([{input, output}]).
`write_v13_dataset` writes our offline rebuild in that layout (`kamado eval jaster-prepare`): the repo ships a small
cut of it for the tiny recipe (samples/eval/jaster), and `read_v13_dataset` reads it back — or a dataset folder made
by llm-jp-eval v1.3 itself, so the same runner scores a model on upstream's files.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kamado.atomic import atomic_write_text
from kamado.errors import DataError
from kamado.eval.jaster.base import SPLITS, Sample, TaskData
from kamado.eval.jaster.tasks import TASK_NAMES, TASKS, load_task


def is_v13_dataset(path: Path) -> bool:
    return (path / "test").is_dir()


def write_v13_dataset(
    benchmarks_dir: Path, out: Path, tasks: tuple[str, ...] = TASK_NAMES, limits: dict[str, int | None] | None = None
) -> dict[str, dict[str, int]]:
    """Build each task from the raw files and write its splits; `limits[split]` keeps the first N samples of a
    split (None: all). Returns {task: {split: samples written}}."""
    limits = limits or {}
    written: dict[str, dict[str, int]] = {}
    for name in tasks:
        data = load_task(name, benchmarks_dir)
        written[name] = {}
        for split in SPLITS:
            samples = data.split(split)[: limits.get(split)]
            if not samples:
                continue  # read back as an empty split
            record = {
                "instruction": data.task.instruction,
                "output_length": data.task.output_length,
                "metrics": list(data.task.metrics),
                "few_shots": [],
                "label_list": list(data.task.label_list),
                "samples": [{"input": s.input, "output": s.output} for s in samples],
            }
            path = out / split / f"{name}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(record, ensure_ascii=False, indent=1) + "\n")
            written[name][split] = len(samples)
    return written


def _read_split(path: Path) -> tuple[dict[str, Any], tuple[Sample, ...]]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a readable llm-jp-eval dataset file ({e})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("samples"), list):
        raise DataError(f"{path}: expected an object with a 'samples' list")
    samples = []
    for i, s in enumerate(obj["samples"]):
        if not isinstance(s, dict) or not isinstance(s.get("input"), str) or not isinstance(s.get("output"), str):
            raise DataError(f"{path}: sample {i} needs string 'input' and 'output'")
        samples.append(Sample(s["input"], s["output"]))
    return obj, tuple(samples)


def read_v13_dataset(root: Path, name: str) -> TaskData:
    """One task from a v1.3-layout folder. The task's definition (category, instruction, output length, metrics,
    labels) is ours (`TASKS`), and a file whose instruction or metrics differ from it is refused: scores under
    another definition are not this task's scores. A missing train or dev file is an empty split."""
    if name not in TASKS:
        raise DataError(f"jaster task {name!r} is not one kamado scores (one of {', '.join(TASK_NAMES)})")
    task = TASKS[name]
    test = root / "test" / f"{name}.json"
    if not test.is_file():
        raise DataError(f"{test}: file not found (no test split of {name} in {root})")
    splits: dict[str, tuple[Sample, ...]] = {}
    for split in SPLITS:
        path = root / split / f"{name}.json"
        if not path.is_file():
            splits[split] = ()
            continue
        obj, splits[split] = _read_split(path)
        if obj.get("instruction") != task.instruction or list(obj.get("metrics") or []) != list(task.metrics):
            raise DataError(f"{path}: its instruction or metrics are not v1.3's for {name}")
    return TaskData(task, splits["train"], splits["dev"], splits["test"])


def available_tasks(root: Path) -> tuple[str, ...]:
    """The tasks a v1.3-layout folder has a test split of, in registry order."""
    return tuple(n for n in TASK_NAMES if (root / "test" / f"{n}.json").is_file())


def jaster_source(data: Path) -> tuple[Callable[[str], TaskData], tuple[str, ...]]:
    """(task name -> TaskData, the tasks it has) for a v1.3-layout folder or a folder of raw benchmark files."""
    if not data.is_dir():
        raise DataError(f"{data}: no such folder (jaster data: the raw benchmark files or a v1.3 dataset folder)")
    if is_v13_dataset(data):
        return (lambda name: read_v13_dataset(data, name)), available_tasks(data)
    if (data / "jglue").is_dir():
        return (lambda name: load_task(name, data)), TASK_NAMES
    raise DataError(f"{data}: neither raw benchmark files (jglue/, jamp/...) nor a v1.3 dataset (test/TASK.json)")
