# The README's two commands: `make demo` and `make test`. Each creates .venv if missing
# and installs the project into it (torch alone is ~5 GB; the first run takes minutes).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/expr demo

# pytest from the venv (not `python -m pytest`): the repo root must NOT be on sys.path,
# so the tests see `expr.*` exactly as an installed user does.
test: $(STAMP)
	$(BIN)/pytest -q

test-all: $(STAMP)
	$(BIN)/pytest -q -m ''

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
