# make run   — set up .venv (first time) and run the default pipeline on the bundled example
# make test  — set up .venv (first time) and run the test suite (all but the `slow` tests: < 15 min)
# make test-slow — the `slow` tests: real process trees, servers, signals, installs (CI runs both)
# make docs  — build the documentation site (mkdocs build --strict) into site/
# make docs-serve — serve the site at http://127.0.0.1:8000, rebuilt as docs/ changes
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: run test test-slow bench docs docs-serve clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Re-install when the package definition changes; editable, so code edits need no re-install.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

# The docs extra (mkdocs-material, mkdocstrings) on top of the test install.
$(VENV)/.installed-docs: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test,docs]'
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

# NO_MKDOCS_2_WARNING: Material 9.7+ prints a banner about MkDocs 2 on every build
docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

docs-serve: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

clean:
	rm -rf outputs
