# Two user-facing commands: `make demo` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint bench system-deps clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# nginx (RFC-behaviour tests, benchmarks), curl and aria2c (benchmarks) and PostgreSQL (scale-out tests) come from Debian.
system-deps:
	@bash scripts/system-deps.sh

demo: $(STAMP)
	$(BIN)/dtkg demo

test: $(STAMP) system-deps
	$(BIN)/ruff check dtkg_assets dtkg_assets_tests bench
	$(BIN)/mypy dtkg_assets
	$(BIN)/pytest -n 2 --dist loadfile -m "not serial"
	$(BIN)/pytest -m serial

lint: $(STAMP)
	$(BIN)/ruff check dtkg_assets dtkg_assets_tests bench
	$(BIN)/mypy dtkg_assets

bench: $(STAMP) system-deps
	$(BIN)/python bench/stream.py
	$(BIN)/python bench/batch.py

clean:
	rm -rf .dtkg bench/out
