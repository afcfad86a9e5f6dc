# dpsnn: `make demo` runs the toolkit end to end on a small slice; `make test` runs the tests.
# Both create .venv, install the project with the tested versions and, if it is missing,
# install Fashion-MNIST from Debian's package (needs root or sudo).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SYSTEM_FMNIST := /usr/share/datasets/fashion-mnist
# The test files spread over up to 4 cores, each file's tests in one worker (they share module fixtures).
PARALLEL ?= -n auto --maxprocesses 4 --dist loadfile

.PHONY: setup dataset demo experiments notebooks test test-all lint format bench bench-budget clean-demo

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $@

setup: $(STAMP)

dataset:
	@if [ -f data/FashionMNIST/raw/train-images-idx3-ubyte ] || [ -f $(SYSTEM_FMNIST)/train-images-idx3-ubyte.gz ] \
		|| [ -f $(SYSTEM_FMNIST)/train-images-idx3-ubyte ]; then \
		echo "Fashion-MNIST: present"; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get update -q && apt-get install -y -q dataset-fashion-mnist; \
	elif command -v sudo >/dev/null; then \
		sudo apt-get update -q && sudo apt-get install -y -q dataset-fashion-mnist; \
	else \
		echo "Fashion-MNIST is missing: run 'apt-get install dataset-fashion-mnist' as root" >&2; exit 1; \
	fi

demo: setup dataset
	$(BIN)/python scripts/train_model.py --noise-scale 0 --nopeek-weight 0 --train-size 10000 --max-epochs 3 --saveas demo
	$(BIN)/python scripts/train_model.py --noise-scale 0.5 --nopeek-weight 0.5 --train-size 10000 --max-epochs 3 --saveas demo
	$(BIN)/python scripts/train_attacker.py --model demo_0noise_0nopeek --aux-size 2000 --max-epochs 15 --saveas demo_plain_attacker.ckpt
	$(BIN)/python scripts/train_attacker.py --model demo_05noise_05nopeek --aux-size 2000 --max-epochs 15 --saveas demo_defended_attacker.ckpt
	$(BIN)/python scripts/evaluate_models.py --models demo_0noise_0nopeek demo_05noise_05nopeek
	$(BIN)/python scripts/evaluate_attackers.py --attackers demo_plain_attacker demo_defended_attacker \
		--validator-train-size 20000 --validator-epochs 2
	$(BIN)/python scripts/plot_attack.py --attackers demo_plain_attacker demo_defended_attacker
	@echo "demo done: results/*.csv and results/figures/attack_grid.png"

experiments: setup dataset
	$(BIN)/python scripts/run_experiments.py all --seeds 3
	$(BIN)/python scripts/execute_notebooks.py

notebooks: setup
	$(BIN)/python scripts/execute_notebooks.py

test: setup dataset
	$(BIN)/python -m pytest $(PARALLEL)

test-all: setup dataset
	$(BIN)/python -m pytest $(PARALLEL) -m ''

lint: setup
	$(BIN)/ruff check dpsnn scripts tests benchmarks notebooks
	$(BIN)/ruff format --check dpsnn scripts tests benchmarks notebooks

format: setup
	$(BIN)/ruff format dpsnn scripts tests benchmarks notebooks

bench: setup dataset
	$(BIN)/python benchmarks/bench_nopeek.py
	$(BIN)/python benchmarks/bench_training.py
	$(BIN)/python benchmarks/bench_privacy.py
	$(BIN)/python benchmarks/bench_whitebox.py
	$(BIN)/python benchmarks/bench_shadows.py
	$(BIN)/python benchmarks/bench_split.py

bench-budget: setup dataset
	$(BIN)/python benchmarks/bench_budget.py

clean-demo:
	rm -f models/classifiers/demo_* models/attackers/demo_*
