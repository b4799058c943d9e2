"""Check one mutmut mutant by hand: apply its diff to a scratch copy of src/ and run tests against it.

    python tests/mutant_check.py MUTANT_NAME [PYTEST_ARGS ...]      (`make mutant-check MUTANT=... TESTS=...`)
    python tests/mutant_check.py 'kamado.train.speed.x_matmul_params__mutmut_3' tests/train/test_speed.py

How survivors and timeouts are triaged (docs/mutation_triage.md): mutmut's timeouts are wall-clock in effect, so a
loaded machine reports killable mutants as timeouts, and a new test must be shown to kill the mutant it was written
for. The diff comes from `mutmut show` (which needs the `mutants/` folder of a `make mutation` run); mutmut shows a
method's code dedented, so the change is found in the file at the method's indentation. Prints KILLED or SURVIVES
with pytest's summary line; exits 2 when the diff cannot be applied (the source changed since the run). Not collected
by pytest (the file name does not start with test_).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MUTMUT = REPO / ".venv" / "bin" / "mutmut"


def diff_of(name: str) -> tuple[str, str, str]:
    """(file, old text, new text) of a mutant, from `mutmut show`."""
    shown = subprocess.run([str(MUTMUT), "show", name], cwd=REPO, capture_output=True, text=True).stdout
    lines = shown.splitlines()
    files = [line[4:].strip() for line in lines if line.startswith("--- ")]
    hunks = [i for i, line in enumerate(lines) if line.startswith("@@")]
    if not files or not hunks:
        sys.exit(f"mutant_check: no diff for {name!r} (is mutants/ from a `make mutation` run here?)")
    body = lines[hunks[0] + 1 :]
    old = "\n".join(line[1:] for line in body if line[:1] in (" ", "-"))
    new = "\n".join(line[1:] for line in body if line[:1] in (" ", "+"))
    return files[0], old, new


def indented(block: str, prefix: str) -> str:
    return "\n".join(prefix + line if line else line for line in block.split("\n"))


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    name, tests = argv[0], argv[1:]
    path, old, new = diff_of(name)
    work = Path(tempfile.mkdtemp(prefix="mutant_"))
    try:
        shutil.copytree(REPO / "src", work / "src")
        target = work / path
        text = target.read_text(encoding="utf-8")
        for prefix in ("", "    ", "        "):
            if text.count(indented(old, prefix)) == 1:
                target.write_text(text.replace(indented(old, prefix), indented(new, prefix)), encoding="utf-8")
                break
        else:
            print(f"{name} CANNOT APPLY (the source changed since the mutmut run)")
            return 2
        env = {**os.environ, "PYTHONPATH": str(work / "src")}
        cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
        r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        summary = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr.strip()[-300:]
        print(f"{name} {'KILLED' if r.returncode else 'SURVIVES'} | {summary}")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
