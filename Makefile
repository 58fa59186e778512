# The two commands a user needs: `make demo` and `make test`.
# Both create .venv, install the pinned requirements and the asset packages, and are
# idempotent: the install runs again only when a requirements file changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install test lint demo agreement clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.txt requirements-assets.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -r requirements-assets.txt
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples

# One pytest worker per core (pytest-xdist), each with its share of the torch threads
# (tests/conftest.py).
test: lint
	$(BIN)/python -m pytest -q -n auto

# A private federated fine-tune that learns (the demo preset): Gemma 3 270M, 1,000 clients
# with 2 Chinese reviews each, about 100 per round with central noise, dp-fedavg-lora at
# epsilon <= 8, delta = 1e-5; it ends with one line comparing the private model with the
# base model on 1,000 held-out questions. Each call writes a new run directory.
demo: $(STAMP)
	$(BIN)/drencoder run --preset demo --out runs/demo-$$(date +%Y%m%d-%H%M%S)

# Per-question agreement of `drencoder eval`'s MMLU scorer with lm-evaluation-harness
# (docs/evaluation.md). Installs the optional lm_eval extra (requirements-lmeval.txt, fully
# pinned, --no-deps) into .venv; not part of `make test`. About 15 min on 2 busy cores.
agreement: $(STAMP)
	$(BIN)/pip install --quiet --no-deps -r requirements-lmeval.txt
	HF_DATASETS_OFFLINE=1 $(BIN)/python benchmarks/lm_eval_agreement.py --limit 200 \
		--fewshot-limit 57 --shots 0,5 --threads 2 --out benchmarks/results/lm_eval_agreement.json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
