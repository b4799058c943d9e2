# kamado: `make run` (the tiny recipe end to end) and `make test` (lint, types, tests), each in a local venv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: install run test bench mutation mutation-report mutant-check hand-mutations clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/.installed

run: install
	$(BIN)/kamado run recipes/tiny.toml

test: install
	$(BIN)/ruff check src tests bench samples
	$(BIN)/ruff format --check src tests bench samples
	$(BIN)/mypy
	$(BIN)/python -m pytest -n auto --dist loadfile --durations=25

bench: install
	$(BIN)/python bench/train_throughput.py

# Mutation testing of model/, train/ and data/loader.py with mutmut ([tool.mutmut] in pyproject.toml; it works in
# ./mutants), at the lowest priority; not part of `make test`. Resumes: only mutants not yet checked are run
# (tests/mutation_run.py). Prints the surviving mutants. MUTANTS narrows it to name patterns, e.g.
# make mutation MUTANTS='kamado.model.* kamado.data.loader.*'; RERUN='--rerun survived' runs those again too.
MUTANTS ?=
RERUN ?=
CHILDREN ?= 2
mutation: install
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/python tests/mutation_run.py --children $(CHILDREN) $(RERUN) $(foreach m,$(MUTANTS),'$(m)')

# The mutation score per module, and the survivors docs/mutation_triage.md does not name (needs mutants/).
mutation-report: install
	$(BIN)/python tests/mutation_report.py $(foreach m,$(MUTANTS),'$(m)')

# One mutant checked by hand against the tests (for triage; needs mutants/ from `make mutation`), e.g.
# make mutant-check MUTANT='kamado.train.speed.x_matmul_params__mutmut_3' TESTS=tests/train/test_speed.py
mutant-check: install
	$(BIN)/python tests/mutant_check.py '$(MUTANT)' $(TESTS)

# Issue 16's one-line mutations applied by hand to a clone without ../shared; prints the tests that catch each.
hand-mutations: install
	$(BIN)/python tests/hand_mutations.py

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache mutants
