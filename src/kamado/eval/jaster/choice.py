"""Multiple choice: JCommonsenseQA (v1.3 category MC, answer a digit 0-4) and JMMLU (HE, answer a letter A-D).

JMMLU has no upstream split. v1.3 shuffles each subject (one seed-42 generator for the whole run), puts the first
half of each into a dev pool and the rest into a test pool, shuffles both pools, and takes 16 + 16 of them as the
train split (the few-shot examples); the rest are dev and test. Our copy lacks the NC-ND subjects and we do not
have v1.3's subject order, so subjects are taken in sorted order: the sizes follow v1.3's rule exactly, the
membership of each split differs from upstream's.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from kamado.errors import DataError
from kamado.eval.jaster.base import (
    SEED,
    Sample,
    Splits,
    Task,
    field_str,
    keep,
    read_csv_rows,
    read_json_lines,
    split_train_dev,
)

JCOMMONSENSEQA = Task(
    name="jcommonsenseqa",
    category="MC",
    instruction="質問と回答の選択肢を入力として受け取り、選択肢から回答を選択してください。"
    "なお、回答は選択肢の番号（例：0）でするものとします。 回答となる数値をint型で返し、"
    "他には何も含めないことを厳守してください。",
    output_length=1,
    metrics=("exact_match",),
    label_list=("0", "1", "2", "3", "4"),
    sources=("jglue/jcommonsenseqa-v1.3/train-v1.3.json", "jglue/jcommonsenseqa-v1.3/valid-v1.3.json"),
    splits_note="JGLUE train shuffled (seed 42) → 90% train / 10% dev; JGLUE valid → test (JGLUE's test file is "
    "not used by v1.3)",
)


def _jcqa_samples(root: Path, rel: str, dropped: Counter[str], where: str) -> list[Sample]:
    out = []
    for lineno, obj in read_json_lines(root, rel):
        loc = f"{root / rel}:{lineno}"
        choices = ",".join(f"{i}.{field_str(obj, f'choice{i}', loc)}" for i in range(5))
        sample = Sample(f"質問：{field_str(obj, 'question', loc)}\n選択肢：{choices}", field_str(obj, "label", loc))
        if keep(sample, dropped, where):
            out.append(sample)
    return out


def build_jcommonsenseqa(root: Path, dropped: Counter[str]) -> Splits:
    train, dev = split_train_dev(_jcqa_samples(root, JCOMMONSENSEQA.sources[0], dropped, "train file"))
    return train, dev, _jcqa_samples(root, JCOMMONSENSEQA.sources[1], dropped, "valid file")


JMMLU_TRAIN_EXAMPLES = 32  # v1.3's NUM_TRAIN_EXAMPLES: half from the dev pool, half from the test pool

JMMLU = Task(
    name="jmmlu",
    category="HE",
    instruction="与えられた質問と選択肢から、最も適切な回答を選択してください。"
    "なお、回答には選択肢のアルファベット（例：A）のみを含め、他には何も含めないことを厳守してください。",
    output_length=5,
    metrics=("exact_match",),
    label_list=("A", "B", "C", "D"),
    sources=("jmmlu/*.csv",),
    splits_note="each subject shuffled (seed 42), first half → dev pool, rest → test pool; pools shuffled; "
    "16 of each → train, the rest → dev and test. Subjects in sorted order (v1.3's order and its NC-ND "
    "subjects are not available), so the sizes match v1.3's rule but not its exact membership",
)


def build_jmmlu(root: Path, dropped: Counter[str]) -> Splits:
    files = sorted((root / "jmmlu").glob("*.csv"))
    if not files:
        raise DataError(f"{root / 'jmmlu'}: no JMMLU subject files (*.csv) found")
    rng = random.Random(SEED)
    dev_pool: list[Sample] = []
    test_pool: list[Sample] = []
    for path in files:
        rel = f"jmmlu/{path.name}"
        samples = []
        for _, row in read_csv_rows(root, rel, width=6):
            question, a, b, c, d, answer = row
            sample = Sample(f"質問：{question}\n選択肢：A.{a},B.{b},C.{c},D.{d}", answer)
            if keep(sample, dropped, "subject files"):
                samples.append(sample)
        rng.shuffle(samples)
        half = len(samples) // 2
        dev_pool += samples[:half]
        test_pool += samples[half:]
    rng.shuffle(dev_pool)
    rng.shuffle(test_pool)
    k = JMMLU_TRAIN_EXAMPLES // 2
    return dev_pool[:k] + test_pool[:k], dev_pool[k:], test_pool[k:]
