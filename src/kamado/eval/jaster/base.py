"""The shapes every jaster task shares: a task definition, its samples and splits, and the raw-file readers.

A task is what llm-jp-eval v1.3 writes in each dataset's evaluation JSON — instruction, output_length, metrics,
label_list — and its data is the list of {input, output} samples of the train, dev and test splits built the way
v1.3 builds them. The readers raise one `DataError` naming the file (and line or record) for anything a user can
get wrong: a missing file, bad JSON/XML/TSV, a missing field. Records that are well formed but unusable (an empty
answer) are counted by reason in `TaskData.dropped` and left out, never used silently.
"""

from __future__ import annotations

import csv
import io
import json
import random
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kamado.errors import DataError

CATEGORIES = ("NLI", "QA", "RC", "MC", "HE", "MR", "STS")  # v1.3's task categories
METRICS = ("exact_match", "char_f1", "pearson", "spearman")
SPLITS = ("train", "dev", "test")
SEED = 42  # v1.3 calls random.seed(42) before every shuffle it does


@dataclass(frozen=True)
class Sample:
    input: str
    output: str


@dataclass(frozen=True)
class Task:
    """One jaster task as v1.3 defines it. `output_length` is v1.3's generation budget in the evaluated model's
    tokens; `sources` are the raw files (relative to the benchmarks folder) its samples come from."""

    name: str
    category: str
    instruction: str
    output_length: int
    metrics: tuple[str, ...]
    label_list: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()
    splits_note: str = ""  # how train/dev/test are made from the files we have, for the data card

    def __post_init__(self) -> None:
        assert self.category in CATEGORIES, self.category
        assert self.metrics and all(m in METRICS for m in self.metrics), self.metrics


@dataclass(frozen=True)
class TaskData:
    """A task with its samples. A split the offline copy cannot build is empty (see the task's `splits_note`)."""

    task: Task
    train: tuple[Sample, ...]
    dev: tuple[Sample, ...]
    test: tuple[Sample, ...]
    dropped: Mapping[str, int] = field(default_factory=dict)  # unusable records left out, by reason

    def split(self, name: str) -> tuple[Sample, ...]:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r} (one of {', '.join(SPLITS)})")
        return {"train": self.train, "dev": self.dev, "test": self.test}[name]


Splits = tuple[list[Sample], list[Sample], list[Sample]]
Builder = Callable[[Path, Counter[str]], Splits]  # (benchmarks dir, drop counter) -> train, dev, test


def shuffled(samples: list[Sample]) -> list[Sample]:
    """v1.3's `random.seed(42); random.shuffle(samples)`, on a private generator (same sequence, no global state)."""
    out = list(samples)
    random.Random(SEED).shuffle(out)
    return out


def split_train_dev(samples: list[Sample]) -> tuple[list[Sample], list[Sample]]:
    """v1.3's split of an upstream train file: shuffle with seed 42, first 90% train, the rest dev."""
    out = shuffled(samples)
    cut = int(len(out) * 0.9)
    return out[:cut], out[cut:]


def keep(sample: Sample, dropped: Counter[str], where: str) -> bool:
    """False (and counted) for a sample whose input or output is empty: it cannot be trained on or scored."""
    if not sample.output.strip():
        dropped[f"empty output ({where})"] += 1
        return False
    if not sample.input.strip():
        dropped[f"empty input ({where})"] += 1
        return False
    return True


def raw_path(root: Path, rel: str) -> Path:
    path = root / rel
    if not path.is_file():
        raise DataError(f"{path}: file not found (the jaster raw files live in shared/data/benchmarks)")
    return path


def read_text(root: Path, rel: str) -> str:
    path = raw_path(root, rel)
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 ({e.reason})") from None


def read_json(root: Path, rel: str) -> Any:
    path = raw_path(root, rel)
    try:
        return json.loads(read_text(root, rel))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON ({e.msg} at line {e.lineno})") from None


def read_json_lines(root: Path, rel: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSON-lines file (JGLUE's format)."""
    path = raw_path(root, rel)
    for lineno, line in enumerate(read_text(root, rel).split("\n"), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object")
        yield lineno, obj


def read_tsv(root: Path, rel: str, columns: Sequence[str]) -> Iterator[tuple[int, list[str]]]:
    """(line number, cells) per data row of a TSV whose header starts with `columns`; v1.3 splits lines on tabs."""
    path = raw_path(root, rel)
    lines = read_text(root, rel).split("\n")
    header = lines[0].rstrip("\r").split("\t")
    if header[: len(columns)] != list(columns):
        raise DataError(f"{path}: expected the header to start with {list(columns)}, found {header[: len(columns)]}")
    for lineno, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        cells = line.rstrip("\r").split("\t")
        if len(cells) != len(header):
            raise DataError(f"{path}:{lineno}: {len(cells)} tab-separated cells, the header has {len(header)}")
        yield lineno, cells


def read_csv_rows(root: Path, rel: str, width: int) -> Iterator[tuple[int, list[str]]]:
    path = raw_path(root, rel)
    text = read_text(root, rel)
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as e:
        raise DataError(f"{path}: malformed CSV ({e})") from None
    for i, row in enumerate(rows, 1):
        if len(row) != width:
            raise DataError(f"{path}: row {i} has {len(row)} fields, expected {width}")
        yield i, row


def read_xml(root: Path, rel: str) -> ET.Element:
    path = raw_path(root, rel)
    try:
        return ET.fromstring(read_text(root, rel).encode("utf-8"))
    except ET.ParseError as e:
        raise DataError(f"{path}: malformed XML ({e})") from None


def xml_text(elem: ET.Element | None) -> str:
    """An element's text stripped of surrounding whitespace ("" when absent), as xmltodict gives it to v1.3."""
    return "" if elem is None or elem.text is None else elem.text.strip()


def field_str(obj: Mapping[str, Any], key: str, where: str) -> str:
    """obj[key] as a string (numbers are formatted as Python's str() does); DataError naming `where` if missing."""
    if key not in obj or obj[key] is None:
        raise DataError(f"{where}: missing field {key!r}")
    value = obj[key]
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        raise DataError(f"{where}: field {key!r} should be a string or a number, got {type(value).__name__}")
    return str(value)
