"""`make mutation`: run mutmut on the mutants not yet checked, so a long run resumes where the last one stopped.

    python tests/mutation_run.py [--rerun STATUS]... [PATTERN ...]      (`make mutation MUTANTS='kamado.model.*'`)

mutmut 3 re-runs every mutant that matches a name pattern given to `mutmut run`, finished or not; without patterns it
skips finished ones but runs every file in `only_mutate`. This script asks `mutmut results --all true` for each
mutant's status and passes mutmut the exact names of those matching PATTERN (default: all) whose status is "not
checked" or one of the --rerun statuses (e.g. `--rerun "no tests" --rerun survived` after the tests changed). With no
`mutants/` folder yet it is a plain `mutmut run PATTERN ...`. Then it prints the surviving mutants. Not collected by
pytest (the file name does not start with test_).
"""

from __future__ import annotations

import argparse
import fnmatch
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MUTMUT = [str(REPO / ".venv" / "bin" / "mutmut")]


def statuses() -> dict[str, str]:
    """Every known mutant's status ("killed", "survived", "not checked", ...) from `mutmut results --all true`."""
    out = subprocess.run([*MUTMUT, "results", "--all", "true"], cwd=REPO, capture_output=True, text=True, check=True)
    pairs = (line.strip().rsplit(": ", 1) for line in out.stdout.splitlines() if ": " in line)
    return {name: status for name, status in pairs}


def to_run(known: dict[str, str], patterns: list[str], rerun: list[str]) -> list[str]:
    wanted = {"not checked", *rerun}
    return sorted(n for n, s in known.items() if s in wanted and any(fnmatch.fnmatch(n, p) for p in patterns or ["*"]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("patterns", nargs="*", help="mutant name patterns, e.g. 'kamado.model.*' (default: all)")
    ap.add_argument("--rerun", action="append", default=[], help="a status to run again besides 'not checked'")
    ap.add_argument("--children", type=int, default=2, help="mutants tested at once (default 2)")
    args = ap.parse_args()
    run = ["nice", "-n", "19", *MUTMUT, "run", "--max-children", str(args.children)]  # lowest priority
    if not (REPO / "mutants").is_dir():
        rc = subprocess.run([*run, *args.patterns], cwd=REPO).returncode
    else:
        names = to_run(statuses(), args.patterns, args.rerun)
        print(f"{len(names)} mutants to run")
        rc = subprocess.run([*run, *names], cwd=REPO).returncode if names else 0
    print("surviving mutants (mutmut show NAME for the diff):")
    subprocess.run([*MUTMUT, "results"], cwd=REPO)
    return rc


if __name__ == "__main__":
    sys.exit(main())
