"""`make mutation-report`: the mutation score per module, and the survivors docs/mutation_triage.md does not name.

    python tests/mutation_report.py [--markdown] [PATTERN ...]        (needs `mutants/` from `make mutation`)

Reads every mutant's status from `mutmut results --all true` and prints, per source file, how many mutants were
killed, survived, timed out, had no tests or are not checked yet, and the score killed / (killed + survived +
no tests) (timeouts count as killed: mutmut stops a mutant that hangs or runs far past its tests' time). Then it
lists each survivor and timeout that the triage document never mentions, so "every survivor is killed or
explained" can be checked rather than believed.

How the document names mutants: in a table row's first cell, in backticks, by full name (`kamado.train.trainer.
xǁTrainerǁfit__mutmut_57`), by a name shortened to its last parts (`trainer.xǁTrainerǁfit__mutmut_57`, or just
`x_lm_loss__mutmut_26` under a heading that says "prefix `kamado.model.loss.`"), and by number after a named one
(`_58`, or a range `_57`–`_59`). A shortened name counts when exactly one mutant's name ends with it. Not collected
by pytest (the file name does not start with test_).
"""

from __future__ import annotations

import argparse
import fnmatch
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from mutation_run import statuses

REPO = Path(__file__).resolve().parents[1]
TRIAGE = REPO / "docs" / "mutation_triage.md"
OPEN = ("survived", "timeout")
TOKEN = re.compile(r"`([^`]+)`(?:\s*[–-]\s*`_(\d+)`)?")
NUMBERED = re.compile(r"^(.*?)__mutmut_(\d+)$")


def module_of(name: str) -> str:
    """`kamado.train.trainer.xǁTrainerǁfit__mutmut_3` → `kamado.train.trainer`."""
    return name.split(".x", 1)[0] if ".x" in name else name.rsplit(".", 1)[0]


def resolve(short: str, known: set[str], prefix: str) -> str | None:
    """The one known function name (without the number) that `short` names, or None."""
    if prefix and prefix + short in known:
        return prefix + short
    hits = [k for k in known if k == short or k.endswith("." + short) or k.endswith("ǁ" + short)]
    if len(hits) > 1 and prefix:
        hits = [k for k in hits if k.startswith(prefix)]
    return hits[0] if len(hits) == 1 else None


def mentioned(text: str, names: set[str]) -> set[str]:
    """The mutant names the triage document accounts for (see the module docstring for the forms it reads)."""
    functions = {NUMBERED.match(n).group(1) for n in names if NUMBERED.match(n)}  # type: ignore[union-attr]
    found: set[str] = set()
    prefix = ""
    for line in text.splitlines():
        heading = re.search(r"prefix `([^`]+)`", line) if line.startswith("#") else None
        if line.startswith("#"):
            prefix = heading.group(1) if heading else ""
            continue
        if not line.startswith("| `"):
            continue
        cell = line.split("|")[1]
        last: str | None = None
        for token, range_end in TOKEN.findall(cell):
            if token.endswith("*"):  # a wildcard over one function's mutants
                pattern = token if token.startswith("kamado.") else "*" + token
                found |= {n for n in names if fnmatch.fnmatch(n, pattern)}
                continue
            m = NUMBERED.match(token)
            if m:
                func = resolve(m.group(1), functions, prefix)
                bare = "." not in m.group(1) and "ǁ" not in m.group(1)
                if func is None and bare and last is not None and "ǁ" in last:  # a method of the last named class
                    func = resolve(last.rsplit("ǁ", 1)[0] + "ǁ" + m.group(1), functions, prefix)
                if func is None:
                    continue
                last, first = func, int(m.group(2))
            elif token.startswith("_") and token[1:].isdigit() and last is not None:
                first = int(token[1:])
            else:
                continue
            for k in range(first, int(range_end or first) + 1):
                found.add(f"{last}__mutmut_{k}")
    return found & names


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("patterns", nargs="*", help="mutant name patterns (default: all)")
    ap.add_argument("--markdown", action="store_true", help="the score table as Markdown (for LOG.md)")
    args = ap.parse_args()
    known = {n: s for n, s in statuses().items() if any(fnmatch.fnmatch(n, p) for p in args.patterns or ["*"])}
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for name, status in known.items():
        counts[module_of(name)][status] += 1
    cols = ("killed", "survived", "timeout", "no tests", "not checked")
    sep = " | " if args.markdown else "  "
    print(sep.join([f"{'module':<34}", *(f"{c:>11}" for c in cols), f"{'score':>6}"]).strip())
    if args.markdown:
        print("|---|" + "---:|" * (len(cols) + 1))
    for module in sorted(counts):
        c = counts[module]
        done = c["killed"] + c["timeout"] + c["survived"] + c["no tests"]
        score = f"{(c['killed'] + c['timeout']) / done:.3f}" if done else "-"
        row = sep.join([f"{module:<34}", *(f"{c[k]:>11}" for k in cols), f"{score:>6}"])
        print(f"| {row} |" if args.markdown else row)
    open_ = {n for n, s in known.items() if s in OPEN}
    missing = sorted(open_ - mentioned(TRIAGE.read_text(encoding="utf-8"), set(known)))
    print(f"\n{len(open_)} survivors and timeouts; {len(missing)} not named in {TRIAGE.relative_to(REPO)}:")
    for name in missing:
        print(f"    {name}: {known[name]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
