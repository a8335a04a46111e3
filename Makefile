# Set up once, then run any target. Variables can be overridden: make seeds SEEDS="1 2 3" DATA=data/ml-latest-small
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= data/demo
SEEDS ?= 1 2 3
EPOCHS ?= 200

.PHONY: setup demo submission test seeds recipe clean-demo
TRAIN_ARGS ?=
TAG ?= sasrec

$(VENV)/.ready: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt
	touch $@

setup: $(VENV)/.ready

# The whole pipeline on built-in synthetic data in one command: tune on validation answers, print the
# honest test score, write submissions/demo-final.csv and submissions/demo-report/.
demo: setup
	$(PY) 00_make_demo.py --out data/raw/demo --scale small --seed 0
	$(PY) 06_submission.py --input data/raw/demo --recipe recipes/demo.toml

# Raw data + a recipe -> honest test score, final file and report: make submission INPUT=path/to/train_dir
INPUT ?= data/raw/demo
RECIPE ?= recipes/default.toml
SUBMISSION_ARGS ?=
submission: setup
	$(PY) 06_submission.py --input $(INPUT) --recipe $(RECIPE) $(SUBMISSION_ARGS)

test: setup
	$(PY) -m pytest -q tests

# Train + infer every seed in SEEDS, then blend them: SEEDS="1 2 3" make seeds DATA=data/ml-latest-small
seeds: setup
	DATA=$(DATA) TAG=$(TAG) TRAIN_ARGS="$(TRAIN_ARGS)" PY=$(PY) scripts/seeds.sh $(SEEDS)

# Two EASE runs + a sequential model over SEEDS, blended: make recipe DATA=data/Beauty SEQ_ARGS="--preset ce-full"
# (EASE2_ARGS= with nothing after it leaves the second EASE out)
SEQ_ARGS ?= --preset ce-full
EASE_ARGS ?= --preset ease-seq
EASE2_ARGS ?= --preset ease-soft
EASE_WEIGHT ?= 1
EASE2_WEIGHT ?= 1
SEQ_WEIGHT ?= 1
recipe: setup
	DATA=$(DATA) PY=$(PY) SEQ_ARGS="$(SEQ_ARGS)" EASE_ARGS="$(EASE_ARGS)" EASE2_ARGS="$(EASE2_ARGS)" \
		EASE_WEIGHT=$(EASE_WEIGHT) EASE2_WEIGHT=$(EASE2_WEIGHT) SEQ_WEIGHT=$(SEQ_WEIGHT) scripts/recipe.sh $(SEEDS)

clean-demo:
	rm -rf data/raw/demo data/demo data/demo-split data/demo-full submissions/demo-*
