"""Question answering and reading comprehension: JEMHopQA and NIILC (v1.3 category QA), JSQuAD (RC); all char_f1.

Inputs are `質問：{question}` (JSQuAD: `文章：{context}\\n質問：{question}`, the context with its `title [SEP]`
prefix as JGLUE writes it). NIILC joins several answers with ',' and leaves out questions whose answer is '-'
(no answer), as v1.3 does.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from kamado.errors import DataError
from kamado.eval.jaster.base import (
    Sample,
    Splits,
    Task,
    field_str,
    keep,
    read_json,
    read_xml,
    split_train_dev,
    xml_text,
)

JEMHOPQA = Task(
    name="jemhopqa",
    category="QA",
    instruction="質問を入力とし、回答を出力してください。回答の他には何も含めないことを厳守してください。"
    "回答が'はい'と'いいえ'で答えることができる場合、'YES'と'NO'で答えてください。",
    output_length=15,
    metrics=("char_f1",),
    sources=("jemhopqa/train.json", "jemhopqa/dev.json"),
    splits_note="train.json shuffled (seed 42) → 90% train / 10% dev; dev.json → test",
)


def _jemhopqa_samples(root: Path, rel: str, dropped: Counter[str], where: str) -> list[Sample]:
    data = read_json(root, rel)
    if not isinstance(data, list):
        raise DataError(f"{root / rel}: expected a JSON list of questions")
    out = []
    for i, obj in enumerate(data):
        loc = f"{root / rel}: question {i}"
        if not isinstance(obj, dict):
            raise DataError(f"{loc}: expected a JSON object")
        sample = Sample(f"質問：{field_str(obj, 'question', loc)}", field_str(obj, "answer", loc))
        if keep(sample, dropped, where):
            out.append(sample)
    return out


def build_jemhopqa(root: Path, dropped: Counter[str]) -> Splits:
    train, dev = split_train_dev(_jemhopqa_samples(root, JEMHOPQA.sources[0], dropped, "train file"))
    return train, dev, _jemhopqa_samples(root, JEMHOPQA.sources[1], dropped, "dev file")


NIILC = Task(
    name="niilc",
    category="QA",
    instruction="質問に対する答えを出力してください。回答の他には何も含めないことを厳守してください。"
    "答えが複数の場合、コンマ（,）で繋げてください。",
    output_length=180,
    metrics=("char_f1",),
    sources=("niilc/NIILC-ECQA2015_dev.xml", "niilc/NIILC-ECQA2015_test.xml"),
    splits_note="the dev file shuffled (seed 42) → 90% train / 10% dev; the test file → test; questions answered "
    "'-' are left out",
)


def _niilc_samples(root: Path, rel: str, dropped: Counter[str], where: str) -> list[Sample]:
    out = []
    for i, question in enumerate(read_xml(root, rel).iter("question")):
        answers = question.find("answers")
        if question.find("text") is None or answers is None:
            raise DataError(f"{root / rel}: question {i} ({question.get('id')}) has no <text> or no <answers>")
        answer = ",".join(a for a in (xml_text(e) for e in answers.findall("answer")) if a)
        if answer == "-":
            dropped[f"answer '-' (no answer; v1.3 leaves it out) ({where})"] += 1
            continue
        sample = Sample(f"質問：{xml_text(question.find('text'))}", answer)
        if keep(sample, dropped, where):
            out.append(sample)
    return out


def build_niilc(root: Path, dropped: Counter[str]) -> Splits:
    train, dev = split_train_dev(_niilc_samples(root, NIILC.sources[0], dropped, "dev file"))
    return train, dev, _niilc_samples(root, NIILC.sources[1], dropped, "test file")


JSQUAD = Task(
    name="jsquad",
    category="RC",
    instruction="質問に対する回答を文章から一言で抽出してください。回答は名詞で答えてください。 "
    "それ以外には何も含めないことを厳守してください。",
    output_length=25,
    metrics=("char_f1",),
    sources=("jglue/jsquad-v1.3/valid-v1.3.json",),
    splits_note="JGLUE valid → test (first answer of each question). v1.3 makes train/dev from JGLUE's train "
    "file, which is not in the offline copy, so JSQuAD has no train and no dev split here",
)


def build_jsquad(root: Path, dropped: Counter[str]) -> Splits:
    rel = JSQUAD.sources[0]
    data = read_json(root, rel)
    test: list[Sample] = []
    try:
        for article in data["data"]:
            for paragraph in article["paragraphs"]:
                context = paragraph["context"]
                for qa in paragraph["qas"]:
                    answers: list[Any] = qa["answers"]
                    if not answers:
                        dropped["question without answers (valid file)"] += 1
                        continue
                    sample = Sample(f"文章：{context}\n質問：{qa['question']}", str(answers[0]["text"]))
                    if keep(sample, dropped, "valid file"):
                        test.append(sample)
    except (KeyError, TypeError) as e:
        raise DataError(f"{root / rel}: not SQuAD-shaped JSON (missing or wrong {e})") from None
    return [], [], test
