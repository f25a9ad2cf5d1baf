# Two commands for a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench soak clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/kizuna run

test: $(STAMP)
	@# Debian's Chromium drives the browser tests; a Japanese font makes the screenshots legible.
	command -v chromium >/dev/null && fc-list :lang=ja | grep -q . || \
		(apt-get update -qq && apt-get install -y -qq chromium fonts-ipafont-gothic >/dev/null)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check plugin worker webhooks crm devstore tests bench
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench $(FILTER)

soak: $(STAMP)
	@# Outside `make test` and `make bench`: SOAK_MINUTES (default 20) of mixed load.
	$(BIN)/python -m bench.soak

clean:
	rm -rf $(VENV) var
