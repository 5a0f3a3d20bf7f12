# make run   — set up .venv (first time) and run the default pipeline on the bundled example
# make test  — set up .venv (first time) and run the test suite (all but the `slow` tests: < 15 min)
# make test-slow — the `slow` tests: real process trees, servers, signals, installs (CI runs both)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: run test test-slow bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Re-install when the package definition changes; editable, so code edits need no re-install.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/ptflow $(ARGS)

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q -m "not slow" $(ARGS)

test-slow: $(VENV)/.installed
	$(BIN)/python -m pytest -q -m slow $(ARGS)

bench: $(VENV)/.installed
	$(BIN)/python bench/recipes.py
	cd bench && ../$(BIN)/python quantize.py && ../$(BIN)/python calibration.py && ../$(BIN)/python compile.py
	$(BIN)/python bench/cli_startup.py
	$(BIN)/python bench/protocol.py
	$(BIN)/python bench/faults.py
	$(BIN)/python bench/sweep.py --benchmark quick --workload both

clean:
	rm -rf outputs
