"""Value checks shared by every config dataclass: ranges, choices and finite numbers, each a one-line ConfigError.

A bad value must fail when the config is loaded, in the first second, not when the trainer first reads it hours
later (a negative step count that trains nothing, a NaN learning rate, a schedule name only looked up when warmup
ends). Each dataclass's `validate()` states its ranges with `check_fields`; `check_numbers` then walks the whole
tree so that a float field without a stated range still cannot be NaN or infinite, and no integer exceeds int64
(numpy and torch raise OverflowError on those, deep inside a run). Messages name the key, the value and what is
allowed: `optim.lr = nan: must be a finite number > 0`.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from kamado.errors import ConfigError

INT_LIMIT = 2**63  # every integer must fit int64: numpy arrays, torch seeds and deque lengths hold them


@dataclass(frozen=True)
class Range:
    """Values from `lo` to `hi` (open ends excluded); `optional`: None is allowed too (a rule switched off)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    optional: bool = False

    def contains(self, value: float) -> bool:
        if isinstance(value, float) and not math.isfinite(value):
            return False  # NaN fails no comparison, so it is refused explicitly
        if isinstance(value, int) and not -INT_LIMIT <= value < INT_LIMIT:
            return False
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return False
        return self.hi is None or (value < self.hi if self.hi_open else value <= self.hi)

    def describe(self, integer: bool, huge: bool = False) -> str:
        """'an integer >= 1', 'a finite number > 0', 'a number in [0, 1)', 'an integer in 1..9'."""
        kind = "an integer" if integer else "a finite number"
        if self.lo is not None and self.hi is not None:
            lo, hi = _num(self.lo), _num(self.hi)
            if integer and not (self.lo_open or self.hi_open):
                return f"an integer in {lo}..{hi}"
            left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
            return f"{'an integer' if integer else 'a number'} in {left}{lo}, {hi}{right}"
        if self.lo is not None:
            text = f"{kind} {'>' if self.lo_open else '>='} {_num(self.lo)}"
        elif self.hi is not None:
            text = f"{kind} {'<' if self.hi_open else '<='} {_num(self.hi)}"
        else:
            text = kind
        return text + (" and < 2^63" if huge else "")


def _num(x: float) -> str:
    """1 for 1.0, 4294967296 for 2^32, 1e-06 for 1e-6."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


POSITIVE = Range(0, lo_open=True)
NON_NEGATIVE = Range(0)
AT_LEAST_ONE = Range(1)
FRACTION = Range(0, 1)  # a share, a probability, a ratio: [0, 1]


def show(value: Any) -> str:
    """The value as the message shows it; a 400-digit integer is abbreviated (1.000e+400)."""
    if isinstance(value, int) and not isinstance(value, bool) and len(str(abs(value))) > 24:
        digits = str(abs(value))
        return f"{'-' if value < 0 else ''}{digits[0]}.{digits[1:4]}e+{len(digits) - 1}"
    return repr(value)


def check_value(key: str, value: Any, allowed: Range, integer: bool | None = None) -> None:
    """ConfigError `key = value: must be ...` unless `value` is a number in `allowed` (or None when optional);
    `integer`: whether only an int will do (default: whether `value` is one)."""
    if value is None and allowed.optional:
        return
    integer = isinstance(value, int) if integer is None else integer
    number = isinstance(value, int if integer else int | float) and not isinstance(value, bool)
    if not number or not allowed.contains(value):
        huge = number and integer and not -INT_LIMIT <= value < INT_LIMIT
        raise ConfigError(f"{key} = {show(value)}: must be {allowed.describe(integer, huge)}")


_INT_FIELDS: dict[type, frozenset[str]] = {}


def _int_fields(cls: type) -> frozenset[str]:
    """Fields of dataclass `cls` declared `int` or `int | None`: a float there is refused even when in range."""
    if cls not in _INT_FIELDS:
        hints = typing.get_type_hints(cls)
        _INT_FIELDS[cls] = frozenset(name for name, tp in hints.items() if tp in (int, int | None))
    return _INT_FIELDS[cls]


def check_fields(obj: object, section: str, **ranges: Range) -> None:
    """`check_value` on each named field of dataclass `obj`, keys named `section.field` (`field` when no section)."""
    ints = _int_fields(type(obj))
    for name, allowed in ranges.items():
        check_value(f"{section}.{name}" if section else name, getattr(obj, name), allowed, name in ints)


def check_items(key: str, values: Iterable[Any], allowed: Range) -> None:
    """`check_value` on each item of a list, keys named `key[i]`."""
    for i, v in enumerate(values):
        check_value(f"{key}[{i}]", v, allowed)


def check_choice(key: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{key} = {value!r}: must be one of {', '.join(map(repr, choices))}")


def check_numbers(obj: Any, prefix: str = "") -> None:
    """Every float in the tree finite, every integer within int64, whatever field holds it (lists and tables too):
    the safety net behind the per-field ranges, so a new field cannot bring NaN back."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            check_numbers(getattr(obj, f.name), f"{prefix}.{f.name}" if prefix else f.name)
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            check_numbers(v, f"{prefix}[{i}]")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            check_numbers(v, f"{prefix}.{k}")
    elif isinstance(obj, int | float) and not isinstance(obj, bool):
        check_value(prefix, obj, Range())
