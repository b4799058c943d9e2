"""The registry of jaster tasks and `load_task`, which builds a task's train/dev/test samples from the raw files.

The twelve tasks are those of llm-jp-eval v1.3 whose raw data we hold offline (shared/data/benchmarks), in v1.3's
category order. Two guards come on top of v1.3's own preprocessing, both counted in `TaskData.dropped`:

- a sample whose gold output is not in the task's label_list is left out (v1.3 would keep it, unanswerable);
- a train sample whose input is also the input of a dev or test sample is left out, so that no evaluation
  question is ever trained on, even where the upstream files repeat one across their splits.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from kamado.eval.jaster import choice, nli, numeric, qa
from kamado.eval.jaster.base import Builder, Sample, Task, TaskData

_REGISTRY: dict[str, tuple[Task, Builder]] = {
    task.name: (task, build)
    for task, build in (
        (nli.JAMP, nli.build_jamp),
        (nli.JANLI, nli.build_janli),
        (nli.JNLI, nli.build_jnli),
        (nli.JSEM, nli.build_jsem),
        (nli.JSICK, nli.build_jsick),
        (qa.JEMHOPQA, qa.build_jemhopqa),
        (qa.NIILC, qa.build_niilc),
        (qa.JSQUAD, qa.build_jsquad),
        (choice.JCOMMONSENSEQA, choice.build_jcommonsenseqa),
        (choice.JMMLU, choice.build_jmmlu),
        (numeric.MAWPS, numeric.build_mawps),
        (numeric.JSTS, numeric.build_jsts),
    )
}

TASKS: dict[str, Task] = {name: task for name, (task, _) in _REGISTRY.items()}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise KeyError(f"unknown jaster task {name!r} (one of {', '.join(TASK_NAMES)})")
    return TASKS[name]


def _in_labels(samples: list[Sample], task: Task, dropped: Counter[str], split: str) -> list[Sample]:
    if not task.label_list:
        return samples
    out = [s for s in samples if s.output in task.label_list]
    if len(out) < len(samples):
        dropped[f"output not in label_list ({split})"] += len(samples) - len(out)
    return out


def load_task(name: str, benchmarks_dir: str | Path) -> TaskData:
    """The task `name` with its train/dev/test samples built from `benchmarks_dir` (shared/data/benchmarks).

    Deterministic: the same files give the same samples in the same order. DataError (naming the file) when a
    raw file is missing or malformed."""
    task, build = get_task(name), _REGISTRY[name][1]
    dropped: Counter[str] = Counter()
    train, dev, test = build(Path(benchmarks_dir), dropped)
    train = _in_labels(train, task, dropped, "train")
    dev = _in_labels(dev, task, dropped, "dev")
    test = _in_labels(test, task, dropped, "test")
    held_out = {s.input for s in dev} | {s.input for s in test}
    clean = [s for s in train if s.input not in held_out]
    if len(clean) < len(train):
        dropped["train input also in dev/test (left out of train)"] += len(train) - len(clean)
    return TaskData(task, tuple(clean), tuple(dev), tuple(test), dict(sorted(dropped.items())))
