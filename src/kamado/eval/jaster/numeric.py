"""Numeric answers: MAWPS (v1.3 category MR, exact_match) and JSTS (STS, pearson and spearman).

MAWPS-ja ships 1,000 test problems and 8 chain-of-thought shot examples. v1.3 turns the shot examples into the
train split (the input is the problem, the output only the number after 「答えは」) and splits the test problems
50/50 into dev and test after a seed-42 shuffle. JSTS's output is the similarity as Python writes the float
("4.2", "0.0"), which is what v1.3 stores; its instruction asks for an integer nonetheless, as v1.3's does.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from kamado.errors import DataError
from kamado.eval.jaster.base import (
    Sample,
    Splits,
    Task,
    field_str,
    keep,
    read_json,
    read_json_lines,
    shuffled,
    split_train_dev,
)

MAWPS_QA_DELIMITER = "\n解答："

MAWPS = Task(
    name="mawps",
    category="MR",
    instruction="与えられた計算問題に対する答えを整数または小数で出力してください。"
    "数値のみを出力し、それ以外には何も含めないことを厳守してください。",
    output_length=10,
    metrics=("exact_match",),
    sources=("mawps/shot_example.json", "mawps/test.json"),
    splits_note="the 8 shot examples → train (problem → final number); test.json shuffled (seed 42) → 50% dev / "
    "50% test",
)


def _json_list(root: Path, rel: str) -> list[dict[str, object]]:
    data = read_json(root, rel)
    if not isinstance(data, list) or not all(isinstance(x, dict) for x in data):
        raise DataError(f"{root / rel}: expected a JSON list of objects")
    return data


def build_mawps(root: Path, dropped: Counter[str]) -> Splits:
    train: list[Sample] = []
    rel = MAWPS.sources[0]
    for i, obj in enumerate(_json_list(root, rel)):
        shot = field_str(obj, "shot_example", f"{root / rel}: example {i}")
        question, _, solution = shot.partition(MAWPS_QA_DELIMITER)
        if "答えは" not in solution or "です。" not in solution.split("答えは", 1)[1]:
            dropped["shot example without a final 「答えは…です。」 (shot_example file)"] += 1
            continue
        sample = Sample(question, solution.split("答えは", 1)[1].split("です。", 1)[0])
        if keep(sample, dropped, "shot_example file"):
            train.append(sample)
    rel = MAWPS.sources[1]
    problems = []
    for i, obj in enumerate(_json_list(root, rel)):
        where = f"{root / rel}: problem {i}"
        sample = Sample(field_str(obj, "question", where).split(MAWPS_QA_DELIMITER)[0], field_str(obj, "answer", where))
        if keep(sample, dropped, "test file"):
            problems.append(sample)
    problems = shuffled(problems)
    half = int(len(problems) * 0.5)
    return train, problems[:half], problems[half:]


JSTS = Task(
    name="jsts",
    category="STS",
    instruction="日本語の文ペアの意味がどのくらい近いかを判定し、類似度を0.0〜5.0までの間の値で付与してください。"
    "0.0に近いほど文ペアの意味が異なり、5.0に近いほど文ペアの意味が似ていることを表しています。"
    "整数値のみを返し、それ以外には何も含めないことを厳守してください。",
    output_length=3,
    metrics=("pearson", "spearman"),
    sources=("jglue/jsts-v1.3/train-v1.3.json", "jglue/jsts-v1.3/valid-v1.3.json"),
    splits_note="JGLUE train shuffled (seed 42) → 90% train / 10% dev; JGLUE valid → test (JGLUE's test file is "
    "not used by v1.3)",
)


def _jsts_samples(root: Path, rel: str, dropped: Counter[str], where: str) -> list[Sample]:
    out = []
    for lineno, obj in read_json_lines(root, rel):
        loc = f"{root / rel}:{lineno}"
        label = obj.get("label")
        if not isinstance(label, (int, float)) or isinstance(label, bool):
            raise DataError(f"{loc}: 'label' should be a number, got {label!r:.40}")
        text = f"文1：{field_str(obj, 'sentence1', loc)}\n文2：{field_str(obj, 'sentence2', loc)}"
        sample = Sample(text, str(label))
        if keep(sample, dropped, where):
            out.append(sample)
    return out


def build_jsts(root: Path, dropped: Counter[str]) -> Splits:
    train, dev = split_train_dev(_jsts_samples(root, JSTS.sources[0], dropped, "train file"))
    return train, dev, _jsts_samples(root, JSTS.sources[1], dropped, "valid file")
