"""The fault-injection suite: real processes, faults injected on purpose, fixed seeds so a failure reproduces.

Each test adds what it survived to `fault_counts` (a category -> count tally); the totals are printed at the end of
the pytest run, e.g. `faults: kills survived 12, corruptions detected 30, bad values rejected 180, ...`.
"""

from __future__ import annotations

from collections import Counter

import pytest

_COUNTS: Counter[str] = Counter()


@pytest.fixture
def fault_counts() -> Counter[str]:
    """Add to it: `fault_counts["kills survived"] += 1`."""
    return _COUNTS


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _COUNTS:
        terminalreporter.section("fault-injection suite")
        terminalreporter.write_line("faults: " + ", ".join(f"{k} {v}" for k, v in sorted(_COUNTS.items())))
