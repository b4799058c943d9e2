"""pfgen-bench's files: the questions with their keywords and reference answers, the 20-example pool, published
results, and answer files (`trials.jsonl.xz`).

A data folder is upstream's `data/` (or a folder holding it): `Q01.json` ... `Q50.json` — question, category,
note, keywords, and ~1,000 reference answers per set (R: one model, or P / S / T: several) — and
`questions.jsonl`, the 50 question–answer pairs the prompts' examples come from; each file may be xz-compressed
(`.xz`, as the shared copy and the repo's sample are). A folder with fewer `Q*.json` files (the repo's
`samples/eval/pfgen`, 7 questions) scores only those questions; the examples are always all 50.

Where the data is (`resolve_data`): the folder given, else the full set in `../shared/data/benchmarks/pfgen_bench`
when it is there (beside the working directory or the repository), else the repo's sample.
"""

from __future__ import annotations

import hashlib
import json
import lzma
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kamado.data.jsonl import iter_records
from kamado.errors import DataError

REPO = Path(__file__).resolve().parents[4]
SHARED = Path("../shared/data/benchmarks/pfgen_bench")
SAMPLE = Path("samples/eval/pfgen")


def read_bytes(path: Path) -> bytes:
    """A file's bytes, decompressed when it ends in .xz."""
    try:
        return lzma.decompress(path.read_bytes()) if path.suffix == ".xz" else path.read_bytes()
    except lzma.LZMAError as e:
        raise DataError(f"{path}: not a valid xz file ({e})") from None


def read_json(path: Path) -> Any:
    try:
        return json.loads(read_bytes(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None


def read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-empty line of a `.jsonl` or `.jsonl.xz` file; DataError naming the line."""
    return iter_records(path, text_field=None)


def find(folder: Path, name: str) -> Path | None:
    """`folder/name`, or its `.xz`."""
    for p in (folder / name, folder / f"{name}.xz"):
        if p.is_file():
            return p
    return None


@dataclass(frozen=True)
class Question:
    """One pfgen question: its keywords and reference answer sets (`answers`: set name -> ~1,000 answers)."""

    question_id: str
    question: str
    category: str
    keywords: list[dict[str, Any]]
    answers: dict[str, list[str]]


@dataclass
class PfgenData:
    """A data folder (see the module docstring). Questions are read once and kept."""

    folder: Path
    _questions: dict[str, Question] = field(default_factory=dict, repr=False)
    _files: dict[str, Path] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if (self.folder / "data").is_dir():
            self.folder = self.folder / "data"
        if not self.folder.is_dir():
            raise DataError(f"pfgen data {self.folder}: no such folder (give upstream's data/ folder)")
        for p in sorted(self.folder.iterdir()):
            stem = p.name.removesuffix(".xz").removesuffix(".json")
            if p.name.startswith("Q") and p.name.removesuffix(".xz").endswith(".json") and stem[1:].isdigit():
                self._files.setdefault(stem, p)
        if not self._files:
            raise DataError(f"pfgen data {self.folder}: no Q*.json(.xz) question files")

    @property
    def question_ids(self) -> list[str]:
        return sorted(self._files)

    def question(self, question_id: str) -> Question:
        if question_id not in self._questions:
            path = self._files[question_id]
            d = read_json(path)
            try:
                q = Question(d["question_id"], d["question"], d["category"], d["keywords"], d["answers"])
            except (KeyError, TypeError):
                raise DataError(f"{path}: not a pfgen question file (needs question_id, question, ...)") from None
            if not q.answers or not all(q.answers.values()):
                raise DataError(f"{path}: a question needs reference answers")
            self._questions[question_id] = q
        return self._questions[question_id]

    def by_text(self) -> dict[str, Question]:
        """question text -> Question, for every question of the folder."""
        return {q.question: q for q in map(self.question, self.question_ids)}

    def examples(self) -> list[dict[str, str]]:
        """The 50 question–answer pairs the prompts' examples are drawn from (upstream's `QUESTION_DATA`)."""
        path = find(self.folder, "questions.jsonl")
        if path is None:
            raise DataError(f"pfgen data {self.folder}: no questions.jsonl(.xz) (the examples of the prompts)")
        out = []
        for i, d in read_jsonl(path):
            if not isinstance(d.get("question"), str) or not isinstance(d.get("answer"), str):
                raise DataError(f"{path}:{i}: needs 'question' and 'answer'")
            out.append({"question": d["question"], "answer": d["answer"]})
        return out

    def metadata_hash(self) -> str:
        """Upstream's `metadata_hash`: SHA-1 of the concatenated SHA-1s of the (uncompressed) Q*.json files."""
        digests = "".join(hashlib.sha1(read_bytes(self._files[q])).hexdigest() for q in self.question_ids)
        return hashlib.sha1(digests.encode()).hexdigest()


def resolve_data(given: str | Path | None = None) -> PfgenData:
    """The data folder given, else the full shared set where it is, else the repo's 7-question sample."""
    if given:
        return PfgenData(Path(given))
    for candidate in (SHARED, REPO / SHARED, SAMPLE, REPO / SAMPLE):
        if candidate.is_dir():
            return PfgenData(candidate)
    raise DataError(f"no pfgen data: give --data (upstream's data/ folder); looked for {SHARED} and {SAMPLE}")


def published_results(folder: Path) -> list[dict[str, Any]]:
    """The `result.json(.xz)` files under `folder/results` (upstream's published scores), sorted by model name,
    each with its path; the folder may be the data folder's parent or the data folder itself."""
    roots = [folder / "results", folder.parent / "results"]
    root = next((r for r in roots if r.is_dir()), None)
    if root is None:
        return []
    out = []
    for p in sorted([*root.rglob("result.json"), *root.rglob("result.json.xz")]):
        r = read_json(p)
        if isinstance(r, dict) and "score" in r and "questions" in r:
            out.append({**r, "path": str(p)})
    return sorted(out, key=lambda r: str(r.get("config", {}).get("model", r["path"])))
