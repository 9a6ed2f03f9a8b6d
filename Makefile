# Two entry points on a fresh machine with only Python: `make demo` and `make test`.
# Each creates .venv on first use. torch is pinned to the CPU build this project is tested on
# (an unpinned torch pulls gigabytes of CUDA wheels); on a GPU machine install your CUDA torch
# first and run `make install TORCH=`.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install demo test test-fast lint format clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(if $(TORCH),$(BIN)/pip install -q "$(TORCH)")
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

demo: install
	$(BIN)/sae run --config configs/quickstart.yaml --out runs/quickstart --overwrite

test: install lint
	$(BIN)/python -m pytest -q

# Local work: everything but the tests marked slow (real trainings, DDP, signals); ~2 minutes.
test-fast: install lint
	$(BIN)/python -m pytest -q -m "not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
