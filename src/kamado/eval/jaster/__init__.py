"""jaster: the Japanese task suite of llm-jp-eval v1.3, rebuilt offline from the raw benchmark files.

`load_task(name, benchmarks_dir)` gives a task's definition (v1.3's instruction, output length, metrics, label
list) and its train/dev/test samples; `task_messages` turns a sample into chat messages with v1.3's prompt, and
`kamado.eval.jaster.metrics` scores answers the way v1.3's evaluator does. The evaluation runner and the
post-training data builder (`kamado.posttrain.data_build`) both start here.
"""

from kamado.eval.jaster.base import CATEGORIES, SPLITS, Sample, Task, TaskData
from kamado.eval.jaster.tasks import TASK_NAMES, TASKS, get_task, load_task

__all__ = ["CATEGORIES", "SPLITS", "TASKS", "TASK_NAMES", "Sample", "Task", "TaskData", "get_task", "load_task"]
