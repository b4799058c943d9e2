"""Bad values: every numeric config field and command-line flag, set to 0, -1, NaN, ±inf and a huge value.

Each case goes through the real command (`kamado.cli.main`, in-process; a few as a real `python -m kamado.cli`)
and must end one of two ways: accepted (the command goes on to its next step), or refused with exit status 2 and
exactly one line on stderr, `kamado: error: ...`, that names the key or the flag. Never a traceback, never an
OverflowError. The config fields are found by walking the dataclass trees (`RunConfig`, `CorpusConfig`), so a field
added later is fuzzed without touching this file.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import types
import typing
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from kamado.cli import main
from kamado.config import RunConfig
from kamado.corpus.config import CorpusConfig
from kamado.model.generate import SamplingParams, sample_next

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "recipes" / "tiny.toml")
HUGE_INT = str(10**30)
VALUES = {int: ["0", "-1", "nan", "inf", "-inf", HUGE_INT], float: ["0", "-1", "nan", "inf", "-inf", "1e308"]}


# ---- the fields, found by walking the dataclass tree ---------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Target:
    key: str  # what the error must name, e.g. `data.phases[0].start_tokens`
    override: str  # the dotted key of the override that sets it, e.g. `data.phases`
    kind: type  # int or float
    value: Callable[[str], str]  # TOML literal of the number -> TOML value of the override


def _same(lit: str) -> str:
    return lit


def targets(cls: type, path: str = "") -> Iterator[Target]:
    """Every number a TOML file can set in dataclass `cls`: fields, list items, tuple items, table values, and
    fields of the tables in a list (`[[data.phases]]`)."""
    defaults = cls()
    for name, tp in typing.get_type_hints(cls).items():
        key = f"{path}.{name}" if path else name
        yield from _targets_of(tp, getattr(defaults, name), key)


def _targets_of(tp: Any, default: Any, key: str) -> Iterator[Target]:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (types.UnionType, typing.Union):
        yield from _targets_of(next(a for a in args if a is not type(None)), default, key)
    elif dataclasses.is_dataclass(tp):
        yield from targets(tp, key)
    elif tp in (int, float):
        yield Target(key, key, tp, _same)
    elif origin is list and dataclasses.is_dataclass(args[0]):
        for t in targets(args[0]):  # one table in the list, with this one field set
            yield Target(f"{key}[0].{t.key}", key, t.kind, lambda lit, t=t: f"[{{{t.override} = {t.value(lit)}}}]")
    elif origin in (list, tuple) and all(a in (int, float) for a in args if a is not Ellipsis):
        items = [repr(v) for v in default] or ["0"]
        for i in range(len(items)):  # one item replaced, the others kept (lists that go in pairs keep their length)

            def as_list(lit: str, i: int = i) -> str:
                return "[" + ", ".join(lit if j == i else v for j, v in enumerate(items)) + "]"

            yield Target(f"{key}[{i}]", key, args[i] if origin is tuple else args[0], as_list)
    elif origin is dict and args[1] in (int, float):
        yield Target(key, key, args[1], lambda lit: f"{{x = {lit}}}")


RUN_TARGETS = list(targets(RunConfig))
CORPUS_TARGETS = list(targets(CorpusConfig))


def test_the_walk_finds_every_kind_of_field():
    keys = {t.key for t in RUN_TARGETS}
    assert {"optim.lr", "optim.betas[1]", "train.steps", "data.phases[0].start_tokens"} <= keys
    assert {"data.phases[0].weights", "stability.z_threshold", "generate.top_p", "model.norm_eps"} <= keys
    assert {"corpus.web.dedup.threshold", "corpus.web.quality.max_dup_ngram_char_frac[5]"} <= keys
    assert len(RUN_TARGETS) > 80 and len(CORPUS_TARGETS) > 35


# ---- running the command -------------------------------------------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `kamado ARGS` in this process; argparse's own exits included."""
    try:
        code = main(args)
    except SystemExit as e:  # argparse: a flag that is not a number at all
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def refused(code: int, err: str, name: str) -> bool:
    """True when the value was refused as it must be: status 2, one line naming `name`; False when the command
    went on. Anything else (a traceback, two lines, a message that does not say which key) fails the test."""
    assert "Traceback" not in err, err
    if code == 2 and name in err:
        lines = err.splitlines()
        if lines[0].startswith("usage: kamado") and f"error: argument {name}: invalid" in lines[-1]:
            return True  # argparse's own: `--shard-tokens=nan` is not an int (usage, then one error line)
        assert err.startswith("kamado: error: ") and len(lines) == 1, err
        return True
    return False


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "-inf", "huge"])
def test_every_run_config_number(capsys, fault_counts: Counter[str], value: str):
    """`kamado params recipes/tiny.toml --KEY=VALUE`: loads (and checks) the whole run config, builds the model
    on the meta device, and prints its size; nothing heavier."""
    accepted = []
    for t in RUN_TARGETS:
        lit = value if value != "huge" else (HUGE_INT if t.kind is int else "1e308")
        code, out, err = run(capsys, ["params", TINY, f"--{t.override}={t.value(lit)}"])
        if refused(code, err, t.key):
            fault_counts["bad values rejected"] += 1
        else:
            assert code == 0 and "parameters:" in out and not err, (t.key, lit, code, err)
            accepted.append(t.key)
    if value == "-1":  # no field takes a negative number, but for the one whose -1 means "the rest"
        assert accepted == ["parallel.dp_shard"], accepted  # dp_shard = -1: what the other degrees leave
    if value in ("nan", "inf", "-inf"):
        assert not accepted, accepted  # no field takes a non-finite number
    if value == "huge":  # 10^30 fits no integer field (int64 at most); 1e308 is a valid lr, temperature, ...
        assert all(t.kind is float for t in RUN_TARGETS if t.key in accepted), accepted
    if value == "0":  # the zeros that mean something (off, only at the end, greedy, no cap) stay valid
        assert "parallel.dp_shard" not in accepted  # 0 ranks is refused (-1 asks for the rest)
        assert {"train.z_loss", "optim.grad_clip", "train.eval_every", "checkpoint.every"} <= set(accepted)
        assert {"generate.temperature", "generate.top_k", "schedule.warmup_steps"} <= set(accepted)
        assert not {"train.steps", "train.grad_accum", "optim.lr", "train.log_every"} & set(accepted)


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "-inf", "huge"])
def test_every_corpus_config_number(capsys, fault_counts: Counter[str], tmp_path: Path, value: str):
    """`kamado corpus run EMPTY --out OUT --KEY=VALUE`: the corpus config alone, its keys as a user types them
    (`--dedup.threshold`); an accepted value goes on to the next check, which finds no WARC files."""
    empty = tmp_path / "empty"
    empty.mkdir()
    accepted = []
    for t in CORPUS_TARGETS:
        lit = value if value != "huge" else (HUGE_INT if t.kind is int else "1e308")
        args = ["corpus", "run", str(empty), "--out", str(tmp_path / "out"), f"--{t.override}={t.value(lit)}"]
        code, _, err = run(capsys, args)
        if refused(code, err, t.key):  # (its own top-level fields: `corpus.tasks = 0` or `config key 'tasks' ...`)
            fault_counts["bad values rejected"] += 1
        else:
            assert code == 2 and "no .warc" in err, (t.key, lit, err)
            accepted.append(t.key)
    assert not (tmp_path / "out").exists()
    if value in ("-1", "nan", "inf", "-inf"):
        assert not accepted, accepted


# ---- the flags -----------------------------------------------------------------------------------------------

# (command before the flag, the flag's kind, what an accepted value runs into next: the inputs here do not exist)
FLAGS = {
    "--vocab-size": (["tokenizer", "train", "MISSING.jsonl", "--out", "OUT"], int, "MISSING.jsonl"),
    "--min-frequency": (["tokenizer", "train", "MISSING.jsonl", "--out", "OUT"], int, "MISSING.jsonl"),
    "--shard-tokens": (["tokenize", "MISSING.jsonl", "--tokenizer", "TOK", "--out", "OUT"], int, "tokenizer not found"),
    "--max-new-tokens": (["generate", "RUN", "--prompt", "x"], int, "checkpoint"),
    "--temperature": (["generate", "RUN", "--prompt", "x"], float, "checkpoint"),
    "--top-k": (["generate", "RUN", "--prompt", "x"], int, "checkpoint"),
    "--top-p": (["generate", "RUN", "--prompt", "x"], float, "checkpoint"),
    "--seed": (["generate", "RUN", "--prompt", "x"], int, "checkpoint"),
    "--tasks": (["corpus", "run", "EMPTY", "--out", "OUT"], int, "no .warc"),
    "--workers": (["corpus", "run", "EMPTY", "--out", "OUT"], int, "no .warc"),
}


@pytest.mark.parametrize("flag", sorted(FLAGS))
def test_every_flag(capsys, fault_counts: Counter[str], tmp_path: Path, flag: str):
    before, kind, next_error = FLAGS[flag]
    (tmp_path / "EMPTY").mkdir()
    # `--tasks=N` and `--workers=N` are corpus config overrides: `corpus.tasks = 0: ...`, `config key 'tasks' ...`
    name = flag[2:] if flag in ("--tasks", "--workers") else flag
    for value in [*VALUES[float], HUGE_INT] if kind is float else VALUES[int]:
        args = [str(tmp_path / a) if a.isupper() or a.endswith(".jsonl") else a for a in before]
        code, _, err = run(capsys, [*args, f"{flag}={value}"])
        if refused(code, err, name):
            fault_counts["bad values rejected"] += 1
        else:
            assert code == 2 and next_error in err and err.count("\n") == 1, (flag, value, err)
    assert not (tmp_path / "OUT").exists()


def test_empty_prompt(capsys, fault_counts: Counter[str], tmp_path: Path):
    code, _, err = run(capsys, ["generate", str(tmp_path), "--prompt", ""])
    assert refused(code, err, "--prompt")
    fault_counts["bad values rejected"] += 1


def test_sampling_at_extreme_temperatures():
    """Accepted temperatures sample: 1e-300 is greedy (it once overflowed to a NaN softmax), 1e308 uniform."""
    logits = torch.randn(4, 100) * 10
    for t in (5e-324, 1e-300, 1e-40, 1e308):
        got = sample_next(logits, SamplingParams(temperature=t, top_k=7, top_p=0.9), torch.Generator().manual_seed(0))
        assert got.shape == (4,) and bool(((got >= 0) & (got < 100)).all())
        if t < 1e-30:
            assert torch.equal(got, logits.argmax(-1))


# ---- a few as real processes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["params", TINY, "--optim.lr=nan"], "optim.lr = nan: must be a finite number > 0"),
        (["params", TINY, "--corpus.web.dedup.threshold=-inf"], "corpus.web.dedup.threshold = -inf"),
        (["generate", "nowhere", "--prompt", "x", "--top-p", "0"], "--top-p = 0.0: must be a number in (0, 1]"),
    ],
)
def test_real_process(fault_counts: Counter[str], args: list[str], needle: str):
    p = subprocess.run([sys.executable, "-m", "kamado.cli", *args], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 2 and p.stderr.startswith("kamado: error: ") and p.stderr.count("\n") == 1, p.stderr
    assert needle in p.stderr, p.stderr
    fault_counts["bad values rejected"] += 1
