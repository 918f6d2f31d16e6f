# Targets document themselves: a "## text" after the target is its help line.
PYTHON ?= python3
DATA ?= ../shared/datasets/mirflickr25k_subset
MODEL ?= models/mirflickr
SHIPPED_GENERATOR ?= cgan
SHIPPED_PRESET ?= votes
# A tenth of the photos is held out to pick the epoch, kNN's K and the default method, and to calibrate the scores.
SHIPPED_SPLIT ?= 0.9,0.1,0
# The backbone's last blocks retrained with a word layer on the training photos' tags (tagger/training/tune.py).
SHIPPED_TUNE_BLOCKS ?= 2
# The subset's tag lists of photos without an image: more text for word2vec (used when present).
CORPUS ?= $(wildcard $(DATA)/tags_corpus.tsv)

.DEFAULT_GOAL := help
.PHONY: help install test test-fast train model kinds evaluate bench clean

help: ## show this help
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'

install: ## install tagger, its test tools and the Ray engine (pip install -e ".[dev,ray]")
	$(PYTHON) -m pip install -e ".[dev,ray]"

test: ## run every test, slow ones included (what CI runs)
	$(PYTHON) -m pytest -q

test-fast: ## run the tests that take under a few seconds
	$(PYTHON) -m pytest -q -m "not slow"

train: ## train a model bundle on DATA into MODEL
	tagger train $(DATA) --out $(MODEL) $(if $(CORPUS),--corpus $(CORPUS))

model: ## rebuild the shipped model (tagger/assets/model) from the MIRFLICKR subset at DATA
	@test -f $(DATA)/annotations.jsonl || { echo "MIRFLICKR subset not found at $(DATA): set DATA=folder (with annotations.jsonl)"; exit 1; }
	tagger train $(DATA) --out tagger/assets/model --generator $(SHIPPED_GENERATOR) --preset $(SHIPPED_PRESET) --split $(SHIPPED_SPLIT) --tune-blocks $(SHIPPED_TUNE_BLOCKS) --half $(if $(CORPUS),--corpus $(CORPUS))

kinds: ## rewrite the shipped model's kinds.json (kinds, keywords, categories) from its vocabulary; needs WordNet
	$(PYTHON) -m embeddings.kinds tagger/assets/model

evaluate: ## evaluate MODEL on the test split of DATA into reports/
	tagger evaluate $(DATA) --model $(MODEL) --out reports

bench: ## run every benchmark in bench/, print one table, write bench/results.json (under 20 min; BENCH_ARGS="--only lookup")
	$(PYTHON) bench/run.py $(BENCH_ARGS)

clean: ## remove caches and build files
	rm -rf build dist *.egg-info .pytest_cache .cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
