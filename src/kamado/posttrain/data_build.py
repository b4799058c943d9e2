"""Post-training data from real benchmark files: jaster SFT conversations, DPO prompts, held-out test prompts, and
off-policy preference pairs from Japanese Vicuna QA's real GPT-4 pairwise judgments.

PLaMo-100B's SFT mixes jaster-style task data with chat data, and its DPO rounds combine off-policy pairs with
on-policy samples graded by a judge (PLaMo-100B §5). Offline, the jaster train splits give the SFT conversations
and the verifiable prompts (known answer, known metric) for on-policy DPO; Japanese Vicuna QA gives the only real
Japanese preference pairs we hold: two real models' answers to one question, GPT-4 choosing between them in both
answer orders. A pair is kept only when both orders name the same winner.

The one rule that matters: nothing of a dev or test split ever enters training. sft.jsonl and prompts.jsonl come
from train splits only (which `load_task` has already cleared of any input that a dev or test sample shares);
test.jsonl holds test splits for the before/after table and is never trained on. Japanese Vicuna QA becomes
training data here, so it can no longer serve as an evaluation of a model trained on it.

Every unusable record is counted by reason in the data card, never used silently; every file is written
atomically (`kamado.atomic`), so a killed build leaves whole files.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
from collections import Counter
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path
from typing import Any

from kamado.atomic import atomic_write_bytes, atomic_write_text
from kamado.errors import DataError
from kamado.eval.jaster import TASK_NAMES, Sample, Task, load_task
from kamado.eval.jaster.prompt import task_messages

VICUNA = "ja_vicuna_qa"
VERDICTS = ("model_1", "model_2", "tie")
DATA_FILES = ("sft", "prompts", "test", "pairs")


def read_sources(root: Path) -> dict[str, dict[str, str]]:
    """Provenance per benchmark folder from the benchmarks' SOURCES.md table: {folder: {upstream, licence}}."""
    path = root / "SOURCES.md"
    if not path.is_file():
        raise DataError(f"{path}: file not found (the provenance and licences of the benchmark files)")
    out: dict[str, dict[str, str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[0].endswith("/") and " " not in cells[0]:
            out[cells[0].rstrip("/")] = {"upstream": cells[1], "licence": cells[3]}
    return out


def _limited(samples: Sequence[Sample], limit: int | None, key: str) -> list[Sample]:
    """All samples, or `limit` of them chosen by a generator seeded with `key`, in their original order."""
    if limit is None or len(samples) <= limit:
        return list(samples)
    picked = sorted(random.Random(key).sample(range(len(samples)), limit))
    return [samples[i] for i in picked]


def prompt_record(task: Task, sample: Sample) -> dict[str, Any]:
    """A prompt with its known answer: what on-policy DPO samples from and the verifiable scorer grades."""
    return {
        "messages": task_messages(task, sample.input),
        "answer": sample.output,
        "task": task.name,
        "label_list": list(task.label_list),
        "metric": task.metrics[0],
    }


def sft_record(task: Task, sample: Sample) -> dict[str, Any]:
    messages = [*task_messages(task, sample.input), {"role": "assistant", "content": sample.output}]
    return {"messages": messages, "task": task.name, "answer": sample.output}


def _json_lines(path: Path, bad: Counter[str], label: str) -> Iterator[dict[str, Any]]:
    """The JSON objects of a JSON-lines file; a line that is not one is counted in `bad` under `label`."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    for line in path.read_text(encoding="utf-8-sig").split("\n"):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            obj = None
        if isinstance(obj, dict):
            yield obj
        else:
            bad[f"{label}: not a JSON object"] += 1


def _verdict(record: dict[str, Any]) -> str:
    """'model_1' or 'model_2' (the winner both answer orders agree on), or the reason the judgment is dropped."""
    verdicts = [record.get("g1_winner")]
    if "g2_winner" in record:  # the judge also saw the answers in swapped order
        verdicts.append(record["g2_winner"])
    if any(v not in VERDICTS for v in verdicts):
        return "unparseable verdict"
    if all(v == "tie" for v in verdicts):
        return "tie"
    if len(set(verdicts)) > 1:
        return "inconsistent verdicts between the two answer orders"
    return str(verdicts[0])


def read_vicuna_pairs(root: Path, exclude_models: Collection[str] = ()) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(pairs, report) from `root/ja_vicuna_qa`: one pair per judgment whose two answer orders agree on a winner.

    report: judgments (non-blank lines of the judgment files), kept, and dropped {reason: count}, with
    kept + sum(dropped) == judgments; bad lines of the question and answer files are counted too."""
    base = root / VICUNA
    bad: Counter[str] = Counter()
    questions: dict[Any, str] = {}
    for q in _json_lines(base / "question.jsonl", bad, "question.jsonl"):
        turns = q.get("turns")
        if "question_id" in q and isinstance(turns, list) and turns and isinstance(turns[0], str):
            questions[q["question_id"]] = turns[0]
        else:
            bad["question.jsonl: record without question_id or turns"] += 1
    answers: dict[tuple[str, Any], str] = {}
    for path in sorted(base.glob("model_answer/*/*.jsonl")):
        for a in _json_lines(path, bad, str(path.relative_to(base))):
            try:
                answers[(str(a["model_id"]), a["question_id"])] = str(a["choices"][0]["turns"][0])
            except (KeyError, IndexError, TypeError):
                bad[f"{path.relative_to(base)}: record without model_id, question_id or choices[0].turns[0]"] += 1
    judgment_files = sorted(base.glob("model_judgment/pairwise/*/*.jsonl"))
    if not judgment_files:
        raise DataError(f"{base / 'model_judgment/pairwise'}: no pairwise judgment files (*/*.jsonl)")
    judge_bad: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    pairs: list[dict[str, Any]] = []
    for path in judgment_files:
        for rec in _json_lines(path, judge_bad, path.name):
            reason, pair = _pair(rec, questions, answers, exclude_models)
            if pair is None:
                dropped[reason] += 1
            else:
                pairs.append(pair)
    dropped["not a JSON object"] += sum(judge_bad.values())
    report = {
        "judgments": len(pairs) + sum(dropped.values()),
        "kept": len(pairs),
        "dropped": {k: v for k, v in sorted(dropped.items()) if v},
        "bad_lines_in_questions_and_answers": dict(sorted(bad.items())),
        "judgment_files": [str(p.relative_to(root)) for p in judgment_files],
        "wins_by_model": dict(sorted(Counter(p["models"][0] for p in pairs).items())),
    }
    return pairs, report


def _pair(
    rec: dict[str, Any], questions: dict[Any, str], answers: dict[tuple[str, Any], str], exclude: Collection[str]
) -> tuple[str, dict[str, Any] | None]:
    """(reason, None) for a judgment that gives no pair, ("", pair) for one that does."""
    if any(k not in rec for k in ("question_id", "model_1", "model_2", "g1_winner")):
        return "judgment without question_id, model_1, model_2 or g1_winner", None
    verdict = _verdict(rec)
    if verdict not in ("model_1", "model_2"):
        return verdict, None
    qid, models = rec["question_id"], (str(rec["model_1"]), str(rec["model_2"]))
    if qid not in questions:
        return "question not in question.jsonl", None
    if "question" in rec and rec["question"] != questions[qid]:
        return "judged question differs from question.jsonl", None
    texts = []
    for i, model in enumerate(models, 1):
        if (model, qid) not in answers:
            return "answer not in model_answer/", None
        if f"answer_{i}" in rec and rec[f"answer_{i}"] != answers[(model, qid)]:
            return "judged answer differs from model_answer/", None
        texts.append(answers[(model, qid)].strip())
    if not all(texts) or not questions[qid].strip():
        return "empty question or answer", None
    if any(m in exclude for m in models):
        return "a model excluded by the build options", None
    w = 0 if verdict == "model_1" else 1
    pair = {
        "prompt": [{"role": "user", "content": questions[qid]}],
        "chosen": texts[w],
        "rejected": texts[1 - w],
        "source": VICUNA,
        "question_id": qid,
        "models": [models[w], models[1 - w]],
        "judge": str(rec.get("judge_model", "")),
    }
    return "", pair


def _jsonl_bytes(records: Sequence[dict[str, Any]], compress: bool) -> bytes:
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")
    return gzip.compress(data, compresslevel=9, mtime=0) if compress else data  # mtime=0: byte-reproducible


def build_posttrain_data(
    benchmarks_dir: str | Path,
    out_dir: str | Path,
    per_task_limit: int | None = None,
    seed: int = 0,
    *,
    test_limit: int | None = None,
    exclude_pair_models: Collection[str] = (),
    compress: bool = False,
) -> dict[str, Any]:
    """Write sft, prompts, test and pairs (`.jsonl`, or `.jsonl.gz` with `compress`), data_card.json and
    DATA_CARD.md into `out_dir`; return the data card.

    per_task_limit caps each task's train samples (sft and prompts) and, unless test_limit is given, its test
    samples; the capped subset is a seeded draw (`seed`) kept in the task's order. exclude_pair_models drops the
    pairs in which one of these model ids answered (e.g. for licence reasons)."""
    root, out = Path(benchmarks_dir), Path(out_dir)
    for label, limit in (("per_task_limit", per_task_limit), ("test_limit", test_limit)):
        if limit is not None and limit < 1:
            raise ValueError(f"{label} must be at least 1, got {limit}")
    sources = read_sources(root)
    test_cap = per_task_limit if test_limit is None else test_limit
    sft: list[dict[str, Any]] = []
    prompts: list[dict[str, Any]] = []
    test: list[dict[str, Any]] = []
    tasks: dict[str, Any] = {}
    for name in TASK_NAMES:
        data = load_task(name, root)
        task = data.task
        train = _limited(data.train, per_task_limit, f"{seed}/{name}/train")
        held = _limited(data.test, test_cap, f"{seed}/{name}/test")
        sft += [sft_record(task, s) for s in train]
        prompts += [prompt_record(task, s) for s in train]
        test += [prompt_record(task, s) for s in held]
        folder = task.sources[0].split("/")[0]
        tasks[name] = {
            "category": task.category,
            "metrics": list(task.metrics),
            "available": {"train": len(data.train), "dev": len(data.dev), "test": len(data.test)},
            "written": {"sft": len(train), "prompts": len(train), "test": len(held)},
            "dropped": dict(data.dropped),
            "splits": task.splits_note,
            "files": list(task.sources),
            "upstream": sources.get(folder, {}).get("upstream", "not listed in SOURCES.md"),
            "licence": sources.get(folder, {}).get("licence", "not listed in SOURCES.md"),
        }
    trained_inputs = {m["messages"][-2]["content"] for m in sft}
    assert not trained_inputs & {r["messages"][-1]["content"] for r in test}, "a test input is in sft.jsonl"
    pairs, pair_report = read_vicuna_pairs(root, exclude_pair_models)
    pair_report.update(sources.get(VICUNA, {"upstream": "not listed in SOURCES.md", "licence": "unknown"}))

    out.mkdir(parents=True, exist_ok=True)
    suffix = ".jsonl.gz" if compress else ".jsonl"
    files: dict[str, Any] = {}
    for stem, records in zip(DATA_FILES, (sft, prompts, test, pairs), strict=True):
        blob = _jsonl_bytes(records, compress)
        atomic_write_bytes(out / (stem + suffix), blob)
        files[stem + suffix] = {"lines": len(records), "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}
    card = {
        "built_by": "kamado.posttrain.data_build.build_posttrain_data",
        "options": {
            "per_task_limit": per_task_limit,
            "test_limit": test_cap,
            "seed": seed,
            "exclude_pair_models": sorted(exclude_pair_models),
        },
        "rules": RULES,
        "files": files,
        "tasks": tasks,
        "pairs": pair_report,
    }
    atomic_write_text(out / "data_card.json", json.dumps(card, ensure_ascii=False, indent=1) + "\n")
    atomic_write_text(out / "DATA_CARD.md", render_data_card(card))
    return card


RULES = [
    "sft and prompts come from train splits only; dev and test splits never enter training.",
    "A train sample whose input is also the input of a dev or test sample is left out of train (counted).",
    "test holds TEST splits only, for the before/after evaluation table; never train on it.",
    "JNLI and JSQuAD have no train split offline (JGLUE's train files are not in the copy): test only.",
    "Japanese Vicuna QA becomes DPO training data here: do not use it to evaluate a model trained on these pairs.",
    "Pairs are kept only when GPT-4's verdicts in both answer orders name the same winner; ties, inconsistent "
    "and unparseable verdicts are dropped and counted.",
]

MODEL_OUTPUT_TERMS = (
    "The pair texts are other models' outputs, which carry their makers' terms beside the data set's licence: "
    "openai--text-davinci-003 (answers) and GPT-4 (verdicts) fall under OpenAI's terms of use, which restrict "
    "using outputs to develop competing models; tokyotech-llm--Swallow-70b-instruct-hf is a Llama 2 derivative, "
    "whose licence forbids using its outputs to improve other large language models. Check these terms before "
    "training a model you distribute."
)


def render_data_card(card: dict[str, Any]) -> str:
    """DATA_CARD.md: the same facts as data_card.json, for people."""
    opts, pairs = card["options"], card["pairs"]
    lines = [
        "# Post-training data card",
        "",
        f"Built by `{card['built_by']}` (per-task limit {opts['per_task_limit']}, test limit {opts['test_limit']},"
        f" seed {opts['seed']}, pairs excluding models {opts['exclude_pair_models'] or 'none'}).",
        "",
        "## Rules",
        "",
        *[f"- {rule}" for rule in card["rules"]],
        "",
        "## Files",
        "",
        "| file | lines | bytes | sha256 |",
        "|---|---:|---:|---|",
        *[f"| `{n}` | {f['lines']} | {f['bytes']} | `{f['sha256'][:16]}…` |" for n, f in card["files"].items()],
        "",
        "## jaster tasks (llm-jp-eval v1.3 semantics)",
        "",
        "| task | category | metric | train | dev | test | sft | prompts | test.jsonl | licence |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, t in card["tasks"].items():
        a, w = t["available"], t["written"]
        lines.append(
            f"| {name} | {t['category']} | {', '.join(t['metrics'])} | {a['train']} | {a['dev']} | {a['test']} "
            f"| {w['sft']} | {w['prompts']} | {w['test']} | {t['licence']} |"
        )
    lines += [
        "",
        "Each line keeps the licence of its task's data; lines from CC BY-SA 4.0 data are shared under CC BY-SA 4.0 "
        "with the attribution above. The instructions are llm-jp-eval v1.3's task definitions.",
        "",
        "Splits, sources and records left out, per task:",
        "",
    ]
    for name, t in card["tasks"].items():
        dropped = "; ".join(f"{k}: {v}" for k, v in t["dropped"].items()) or "none"
        lines.append(f"- **{name}** ({t['upstream']}): {t['splits']}. Left out: {dropped}.")
    lines += [
        "",
        "## Preference pairs: Japanese Vicuna QA",
        "",
        f"Upstream {pairs.get('upstream')}, licence {pairs.get('licence')}. Real GPT-4 pairwise judgments between "
        "real models' answers; a pair's chosen answer is the one both answer orders preferred.",
        "",
        f"- judgments: {pairs['judgments']}; kept: {pairs['kept']}",
        *[f"- dropped, {k}: {v}" for k, v in pairs["dropped"].items()],
        *[f"- bad line, {k}: {v}" for k, v in pairs["bad_lines_in_questions_and_answers"].items()],
        "- chosen answers by model: " + ", ".join(f"{m} {n}" for m, n in pairs["wins_by_model"].items()),
        "",
        MODEL_OUTPUT_TERMS,
        "",
    ]
    return "\n".join(lines)
