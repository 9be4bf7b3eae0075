# `make demo` and `make test` work on a fresh machine with only Python >= 3.11: each creates the
# virtual environment it needs (.venv), installs the package with the pinned set in
# constraints.txt, then runs. `--no-compile`: Python writes the bytecode of the modules it imports
# when it first imports them, instead of pip compiling every installed file (the test install:
# 52 s against 2 min 2 s on the 2-core machine, 2026-11-25).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_WORKERS ?= 2
# The single-device session collects only the files that use its marker: collecting every file
# imports torch and diffusers in each worker (collect-only: 17 s against 4 s, measured).
SINGLE_DEVICE_FILES := $(shell grep -l 'mark.single_device' tests/test_*.py)

.PHONY: demo test test-all install install-test clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-compile -c constraints.txt -e .
	touch $@

# One pip run for the test environment (installing `.` first and then `.[test]` would resolve twice).
$(VENV)/.installed-test: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-compile -c constraints.txt -e '.[test]'
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: $(VENV)/.installed
	$(PY) -m jaxdistill.demo

# pytest's own exit code is the result: 5 (no tests collected) fails the build like any failure.
# Two sessions: everything on 8 fake CPU devices, then the long single-device trainings on one
# (tests/conftest.py says why).
# `heavy` tests (end-to-end Stable Diffusion training on a tiny folder, few-step SiD and the
# guidance distillations on the mixture, the world teacher and judge training commands, the
# SD planning compiles and the count of DMD2's critic updates, the two-process SIGTERM run: about
# 8 min together, plus 3 for the SD step's fsdp against data-parallel cost comparison) stay out of
# `make test` to keep it under CI's 10 minutes; `make test-all` runs everything.
# `--dist worksteal`: a worker that runs out of tests takes queued ones from the other, so the
# long tests do not leave one core idle at the end (first session: 472 s with the default
# scheduling, 410 s with worksteal, measured back to back on the 2-core machine).
test: $(VENV)/.installed-test
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist worksteal -q -m "not single_device and not heavy"
	JAXDISTILL_TEST_CPU_DEVICES=1 $(PY) -m pytest -n $(PYTEST_WORKERS) --dist worksteal -q -m "single_device and not heavy" $(SINGLE_DEVICE_FILES)

test-all: test
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist worksteal -q -m "heavy and not single_device"
	JAXDISTILL_TEST_CPU_DEVICES=1 $(PY) -m pytest -n $(PYTEST_WORKERS) --dist worksteal -q -m "heavy and single_device" $(SINGLE_DEVICE_FILES)

clean:
	rm -rf $(VENV)
