# Two commands do everything, set-up included:  `make repro` (the pipeline)  and  `make test` (the tests).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DVC_NO_ANALYTICS := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: install sysdeps repro paper-smoke test test-slow lab docs sync-check clean-venv bench-gpu test-gpu

# Create the virtual environment if missing and install the project with its development tools.
# The package asks for lower bounds (settings.ini); constraints.txt pins every version of the reproducible environment
# (torch 2.14.1, torchvision 0.29.1, ...). Nothing is downloaded but packages.
$(STAMP): settings.ini setup.py pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (qualiclip)" >/dev/null
	@touch $(STAMP)

install: $(STAMP)

# The main job: regenerate every table and figure of the active profile (params.yaml, written by `qualiclip profile NAME`;
# the demo by default). `qualiclip check` first: a missing input gives one readable list (what to do for each), not a
# DVC error. Then plain `dvc repro`, which needs nothing else (the paper's KADIS-700k archive is read in place).
repro: install
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/qualiclip check --params params.yaml
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/qualiclip summary --params params.yaml

# The paper profile end to end at smoke scale, on stand-in inputs, in a scratch copy (minutes on a CPU; CI runs it).
paper-smoke: install
	HF_HUB_OFFLINE=1 $(BIN)/python tools/paper_smoke.py

# Headless Chromium (Debian package) for the documentation-site test; installed when missing and possible.
sysdeps:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; } || \
	  echo "chromium is not installed and could not be installed: the docs screenshot test will say so"

# The tests run with TMPDIR set to a fresh folder that is removed when they end, pass or fail: the temporary files of
# every test cell, test and subprocess (gigabytes of checkpoints) go there, so no run leaves anything in the machine's /tmp.
IN_TEST_TMP = tmp=$$(mktemp -d "$${TMPDIR:-/tmp}/qualiclip-test.XXXXXX") && trap 'rm -rf "$$tmp"' EXIT && \
	export TMPDIR="$$tmp" HF_HUB_OFFLINE=1 && echo "temporary files in $$tmp (removed at the end)" &&

# The tests: every notebook's test cells (nbdev_test, slow/gpu cells skipped) and the pytest suite.
test: install sysdeps
	@$(IN_TEST_TMP) $(BIN)/nbdev_test --n_workers 2 --timing && $(BIN)/python -m pytest -q tests

# Heavier test cells (minutes on a CPU; add `gpu` on a GPU machine).
test-slow: install
	@$(IN_TEST_TMP) $(BIN)/nbdev_test --n_workers 1 --flags slow

# Every GPU performance goal in one run (at most 8 minutes on one GPU): JSON lines (also in runs/bench_gpu.jsonl), then a
# summary table. Uses .venv when there is one, else python3 with torch, torchvision and the project's other dependencies
# (on a GPU machine without the environment: the wheels of tools/device_run.sh). BENCH_ARGS=--quick: a CPU check in ~1 min.
bench-gpu:
	@py=$(BIN)/python; [ -x "$$py" ] || py=$(PYTHON); \
	HF_HUB_OFFLINE=1 PYTHONPATH="$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH}" "$$py" tools/bench_gpu.py --out runs/bench_gpu.jsonl $(BENCH_ARGS)

# The checks that need a GPU: the notebooks' `#| gpu` cells (with the other test cells) and pytest's GPU tests.
test-gpu: install
	@$(IN_TEST_TMP) $(BIN)/nbdev_test --n_workers 1 --flags gpu && $(BIN)/python -m pytest -q tests -k test_gpu_

# The library must be exactly what the notebooks export.
sync-check: install
	$(BIN)/nbdev_export
	@git diff --quiet -- qualiclip || { git --no-pager diff --stat -- qualiclip; echo "qualiclip/ is out of sync with nbs/: run nbdev_export and commit."; exit 1; }

lab: install
	$(BIN)/jupyter lab --allow-root --notebook-dir=nbs

docs: install
	$(BIN)/python tools/build_docs.py

clean-venv:
	rm -rf $(VENV)
