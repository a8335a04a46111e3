# Set up once, then run any target. Variables can be overridden: make seeds SEEDS="1 2 3" DATA=data/ml-latest-small
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= data/demo
SEEDS ?= 1 2 3
EPOCHS ?= 200

.PHONY: setup demo test seeds recipe clean-demo
TRAIN_ARGS ?=
TAG ?= sasrec

$(VENV)/.ready: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -r requirements.txt
	touch $@

setup: $(VENV)/.ready

# The whole pipeline on built-in synthetic data, ending with local scores.
demo: setup
	$(PY) 00_make_demo.py --out data/raw/demo --scale small --seed 0
	$(PY) 01_preprocess.py --input data/raw/demo --holdout-last 5 --holdout-random 5 --seed 0
	$(PY) 02_train.py --data data/demo --model pop
	$(PY) 03_inference.py data/demo/runs/demo-pop-s42/checkpoint.pt
	$(PY) 02_train.py --data data/demo --model sasrec --loss bce --epochs 15 --patience 3
	$(PY) 03_inference.py data/demo/runs/demo-sasrec-bce-s42/checkpoint.pt
	$(PY) 02_train.py --data data/demo --model ease --l2 200
	$(PY) 03_inference.py data/demo/runs/demo-ease-l200-s42/checkpoint.pt
	$(PY) 04_ensemble.py submissions/demo-ease-l200-s42.top100.csv submissions/demo-sasrec-bce-s42.top100.csv \
		--method score --norm zscore --data data/demo --out submissions/demo-blend.csv
	$(PY) 05_evaluate.py submissions/demo-pop-s42.csv --data data/demo
	$(PY) 05_evaluate.py submissions/demo-sasrec-bce-s42.csv --data data/demo
	$(PY) 05_evaluate.py submissions/demo-ease-l200-s42.csv --data data/demo
	$(PY) 05_evaluate.py submissions/demo-blend.csv --data data/demo

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
	rm -rf data/raw/demo data/demo submissions/demo-*
