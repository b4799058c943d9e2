"""Natural language inference: Jamp, JaNLI, JNLI, JSeM, JSICK (v1.3 category NLI, metric exact_match).

Every input is `前提：{premise}\\n仮説：{hypothesis}` and the output is the label word, as in v1.3. Splits follow
v1.3: an upstream train file is shuffled (seed 42) and cut 90/10 into train/dev, the upstream test (or JGLUE's
valid) file is the test split; JSeM has no upstream split and is shuffled and cut 80/10/10.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from kamado.eval.jaster.base import (
    Sample,
    Splits,
    Task,
    field_str,
    keep,
    read_json_lines,
    read_tsv,
    read_xml,
    shuffled,
    split_train_dev,
    xml_text,
)

_ECN = ("entailment", "contradiction", "neutral")
_ANSWER_ONLY = "それ以外には何も含めないことを厳守してください。"


def _nli_input(premise: str, hypothesis: str) -> str:
    return f"前提：{premise}\n仮説：{hypothesis}"


JAMP = Task(
    name="jamp",
    category="NLI",
    instruction="前提と仮説の関係をentailment、contradiction、neutralの中から回答してください。"
    + _ANSWER_ONLY
    + "\n\n制約：\n- 前提から仮説が、時間関係上導出可能である場合はentailmentと出力"
    "\n- 前提と仮説が両立しえない場合はcontradictionと出力\n- そのいずれでもない場合はneutralと出力",
    output_length=3,
    metrics=("exact_match",),
    label_list=_ECN,
    sources=("jamp/train_all.tsv", "jamp/test_2.tsv"),
    splits_note="train_all.tsv shuffled (seed 42) → 90% train / 10% dev; test_2.tsv → test",
)


def build_jamp(root: Path, dropped: Counter[str]) -> Splits:
    cols = ("num", "premise", "hypothesis", "gold_label")
    train_dev = [Sample(_nli_input(r[1], r[2]), r[3]) for _, r in read_tsv(root, JAMP.sources[0], cols)]
    test = [Sample(_nli_input(r[1], r[2]), r[3]) for _, r in read_tsv(root, JAMP.sources[1], cols)]
    train, dev = split_train_dev([s for s in train_dev if keep(s, dropped, "train file")])
    return train, dev, [s for s in test if keep(s, dropped, "test file")]


JANLI = Task(
    name="janli",
    category="NLI",
    instruction="前提と仮説の関係をentailment、non-entailmentの中から回答してください。"
    + _ANSWER_ONLY
    + "\n\n制約：\n- 前提に対して仮説が同じ意味を含む場合は、entailmentと出力"
    "\n- 前提に対して仮説が異なる意味を含む場合は、non-entailmentと出力",
    output_length=7,
    metrics=("exact_match",),
    label_list=("entailment", "non-entailment"),
    sources=("janli/janli.tsv",),
    splits_note="rows whose split column is 'test' → test; the other rows shuffled (seed 42) → 90% train / 10% dev",
)


def build_janli(root: Path, dropped: Counter[str]) -> Splits:
    train_dev: list[Sample] = []
    test: list[Sample] = []
    cols = ("", "sentence_A_Ja", "sentence_B_Ja", "entailment_label_Ja")
    for _, r in read_tsv(root, JANLI.sources[0], cols):
        sample = Sample(_nli_input(r[1], r[2]), r[3])
        is_test = r[-1].strip() == "test"
        if keep(sample, dropped, "test rows" if is_test else "train rows"):
            (test if is_test else train_dev).append(sample)
    train, dev = split_train_dev(train_dev)
    return train, dev, test


JNLI = Task(
    name="jnli",
    category="NLI",
    instruction="前提と仮説の関係をentailment、contradiction、neutralの中から回答してください。"
    + _ANSWER_ONLY
    + "\n\n制約：\n- 前提から仮説が、論理的知識や常識的知識を用いて導出可能である場合はentailmentと出力"
    "\n- 前提と仮説が両立しえない場合はcontradictionと出力\n- そのいずれでもない場合はneutralと出力",
    output_length=3,
    metrics=("exact_match",),
    label_list=_ECN,
    sources=("jglue/jnli-v1.3/valid-v1.3.json",),
    splits_note="JGLUE valid → test. v1.3 makes train/dev from JGLUE's train file, which is not in the offline "
    "copy, so JNLI has no train and no dev split here (JGLUE's own test file is not used by v1.3 and is not used)",
)


def build_jnli(root: Path, dropped: Counter[str]) -> Splits:
    test: list[Sample] = []
    rel = JNLI.sources[0]
    for lineno, obj in read_json_lines(root, rel):
        where = f"{root / rel}:{lineno}"
        sample = Sample(
            _nli_input(field_str(obj, "sentence1", where), field_str(obj, "sentence2", where)),
            field_str(obj, "label", where),
        )
        if keep(sample, dropped, "valid file"):
            test.append(sample)
    return [], [], test


JSEM_FILES = (
    "Adjectives",
    "Adverb",
    "Attitudes",
    "AuxiliaryVerb",
    "CaseParticle",
    "Comparatives",
    "CompoundAdjective",
    "CompoundVerb",
    "Conditional",
    "Conjunction",
    "Coordination",
    "Ellipsis",
    "GeneralizedQuantifier",
    "Modality",
    "NP",
    "NewAdjective",
    "NominalAnaphora",
    "Plurals",
    "Question",
    "TemporalReference",
    "Toritate",
    "Verbs",
)  # v1.3's order: the shuffle below depends on it

JSEM = Task(
    name="jsem",
    category="NLI",
    instruction="前提と仮説の関係をyes、no、unknown、undefの中から回答してください。"
    + _ANSWER_ONLY
    + "\n\n制約：\n- 前提が仮説を含意する場合はyesと出力\n- 前提が仮説の否定を含意する場合はnoと出力"
    "\n- 前提が仮説を含意せず、その否定も含意しない場合はunknownと出力"
    "\n- 与えられた情報のみからは判断ができない場合はundefと出力",
    output_length=3,
    metrics=("exact_match",),
    label_list=("yes", "no", "unknown", "undef"),
    sources=tuple(f"jsem/{name}.xml" for name in JSEM_FILES),
    splits_note="all 22 files in v1.3's order, problems answered infelicitous/unacceptable/weakacceptable/'' left "
    "out; shuffled (seed 42) → 80% train / 10% dev / 10% test",
)


def build_jsem(root: Path, dropped: Counter[str]) -> Splits:
    samples: list[Sample] = []
    for rel in JSEM.sources:
        for problem in read_xml(root, rel).iter("problem"):
            answer = problem.get("answer", "")
            if answer not in JSEM.label_list:
                dropped[f"answer {answer!r} (v1.3 leaves it out)"] += 1
                continue
            premise = "".join(xml_text(p.find("script")) for p in problem.findall("p"))
            sample = Sample(_nli_input(premise, xml_text(problem.find("h/script"))), answer)
            if keep(sample, dropped, "problems"):
                samples.append(sample)
    samples = shuffled(samples)
    n = len(samples)
    return samples[: int(n * 0.8)], samples[int(n * 0.8) : int(n * 0.9)], samples[int(n * 0.9) :]


JSICK = Task(
    name="jsick",
    category="NLI",
    instruction="前提と仮説の関係をentailment、contradiction、neutralの中から回答してください。"
    + _ANSWER_ONLY
    + "\n\n制約：\n- 前提が真であるとき仮説が必ず真になる場合はentailmentと出力"
    "\n- 前提が真であるとき仮説が必ず偽になる場合はcontradictionと出力\n- そのいずれでもない場合はneutralと出力",
    output_length=3,
    metrics=("exact_match",),
    label_list=_ECN,
    sources=("jsick/train.tsv", "jsick/test.tsv"),
    splits_note="train.tsv shuffled (seed 42) → 90% train / 10% dev; test.tsv → test",
)

_JSICK_COLUMNS = (
    "pair_ID",
    "data",
    "sentence_A_En",
    "sentence_B_En",
    "entailment_label_En",
    "relatedness_score_En",
    "corr_entailment_labelAB_En",
    "corr_entailment_labelBA_En",
    "sentence_A_Ja",
    "sentence_B_Ja",
    "entailment_label_Ja",
)


def build_jsick(root: Path, dropped: Counter[str]) -> Splits:
    def rows(rel: str, where: str) -> list[Sample]:
        out = [Sample(_nli_input(r[8], r[9]), r[10]) for _, r in read_tsv(root, rel, _JSICK_COLUMNS)]
        return [s for s in out if keep(s, dropped, where)]

    train, dev = split_train_dev(rows(JSICK.sources[0], "train file"))
    return train, dev, rows(JSICK.sources[1], "test file")
