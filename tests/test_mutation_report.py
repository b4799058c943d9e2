"""The triage-document reader of `make mutation-report`: which mutant names a triage table accounts for."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from mutation_report import mentioned, module_of

NAMES = {f"kamado.train.trainer.xǁTrainerǁfit__mutmut_{i}" for i in range(1, 12)}
NAMES |= {f"kamado.train.trainer.xǁTrainerǁinit_loop__mutmut_{i}" for i in range(1, 6)}
NAMES |= {f"kamado.model.loss.x_lm_loss__mutmut_{i}" for i in range(1, 6)}
NAMES |= {f"kamado.train.callbacks.xǁProgressBarǁon_step_end__mutmut_{i}" for i in range(1, 4)}
NAMES |= {f"kamado.train.callbacks.xǁProgressBarǁon_train_start__mutmut_{i}" for i in range(1, 4)}


def test_the_forms_a_triage_table_uses():
    doc = """
## loss.py (prefix `kamado.model.loss.`)

| mutant | diff | verdict |
|---|---|---|
| `x_lm_loss__mutmut_2` | a | equivalent |

## train/

| mutant | diff | verdict |
|---|---|---|
| `train.trainer.xǁTrainerǁfit__mutmut_3`, `_5`, `_7`–`_9` | b | `fit__mutmut_11`: not in the first cell |
| `kamado.train.trainer.xǁTrainerǁinit_loop__mutmut_4` | c | equivalent |
| `callbacks.xǁProgressBarǁon_train_start__mutmut_2`; `on_step_end__mutmut_3` | d | killed |
| `callbacks.xǁProgressBarǁon_step_end__*` | e | covered |
"""
    got = mentioned(doc, NAMES)
    fit = {f"kamado.train.trainer.xǁTrainerǁfit__mutmut_{i}" for i in (3, 5, 7, 8, 9)}
    assert fit <= got and "kamado.train.trainer.xǁTrainerǁfit__mutmut_11" not in got
    assert "kamado.train.trainer.xǁTrainerǁfit__mutmut_6" not in got  # between two named ones, not in a range
    assert "kamado.model.loss.x_lm_loss__mutmut_2" in got  # a short name under its heading's prefix
    assert "kamado.train.trainer.xǁTrainerǁinit_loop__mutmut_4" in got
    assert "kamado.train.callbacks.xǁProgressBarǁon_train_start__mutmut_2" in got
    assert {f"kamado.train.callbacks.xǁProgressBarǁon_step_end__mutmut_{i}" for i in (1, 2, 3)} <= got  # wildcard
    assert len(got) == 5 + 1 + 1 + 1 + 3


def test_a_short_name_that_two_modules_share_is_not_guessed():
    names = {"kamado.a.x_f__mutmut_1", "kamado.b.x_f__mutmut_1"}
    assert mentioned("| `x_f__mutmut_1` | | |\n", names) == set()
    assert mentioned("| `b.x_f__mutmut_1` | | |\n", names) == {"kamado.b.x_f__mutmut_1"}


def test_module_of_a_mutant():
    assert module_of("kamado.train.trainer.xǁTrainerǁfit__mutmut_3") == "kamado.train.trainer"
    assert module_of("kamado.model.loss.x_lm_loss__mutmut_26") == "kamado.model.loss"
