"""`tests/hand_mutations.py` stays runnable: each mutation's text is still in its file, once, and each names tests
that exist. (Code that moves on silently turns a mutation into one that can never be caught: session 17 removed
the text of a planner mutation, found only when the script was next run.)"""

import shlex
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from hand_mutations import MUTATIONS, REPO


@pytest.mark.parametrize("mutation", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_each_mutation_applies_once_and_names_real_tests(mutation):
    name, file, text, replacement, tests, *marks = mutation
    source = (REPO / file).read_text()
    assert source.count(text) == 1, f"{name}: its text is in {file} {source.count(text)} times, not once"
    assert replacement != text
    paths = [t for i, t in enumerate(tests) if not t.startswith("-") and (i == 0 or tests[i - 1] != "-k")]
    assert paths, f"{name}: no test files named ({shlex.join(tests)})"
    for t in paths:
        assert (REPO / t.split("::")[0]).exists(), f"{name}: {t} does not exist"
    assert len(marks) <= 1
