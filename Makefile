# The README's two commands. Both create .venv if missing and install
# torch==2.13.0 first (the CPU wheel on local disk), then the package.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test test-vllm run lint setup setup-vllm

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# vLLM lives in a venv of its own (.venv-vllm): its pins (torch, transformers < 5.20)
# conflict with the project's. See docs/ENGINES.md. VLLM_PACKAGE=vllm on GPU machines.
VLLM_STAMP := .venv-vllm/.installed
$(VLLM_STAMP): scripts/setup-vllm.sh pyproject.toml
	bash scripts/setup-vllm.sh
	touch $(VLLM_STAMP)

setup-vllm: $(VLLM_STAMP)

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest tests -m "not vllm"

# The tests that run real vLLM (its engine in .venv-vllm, our clients in .venv).
test-vllm: $(STAMP) $(VLLM_STAMP)
	$(BIN)/python -m pytest tests -m vllm

run: $(STAMP)
	$(BIN)/warmstart run --config configs/toy.toml

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
