# ntk_vs_nn: every target that needs the environment installs it first (.venv, pinned by
# requirements.lock), so a fresh clone needs no other step.
PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
PRESET  ?= minutes
DATASET ?= mnist1d
# runs go to the git-ignored runs/ by default (a fresh clone stays clean); OUT=results/quick-mnist1d
# regenerates a committed folder (its tables follow from its records byte-identical)
OUT     ?= runs/$(PRESET)-$(DATASET)
SET     ?=
SETARGS := $(foreach s,$(SET),--set $(s))

.PHONY: install install-nt test-nt table-nn table-ntk tables messages report docs data-fashion-mnist test lint bench clean table-gaussian table-channels table-multiview table-replication

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -c requirements.lock -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# optional extras, each installed once (a stamp): Ray for --executor ray (make test runs its tests),
# torch for benchmarks/peer_pytorch.py only
$(VENV)/.installed-ray: $(STAMP)
	$(VENV)/bin/pip install -q -c requirements.lock -e ".[ray]"
	touch $@

$(VENV)/.installed-bench: $(STAMP)
	$(VENV)/bin/pip install -q -c requirements.lock -e ".[bench]"
	touch $@

table-nn: $(STAMP)
	$(PY) -m ntk_vs_nn table nn --preset $(PRESET) --dataset $(DATASET) --out $(OUT) $(SETARGS)

table-ntk: $(STAMP)
	$(PY) -m ntk_vs_nn table ntk --preset $(PRESET) --dataset $(DATASET) --out $(OUT) $(SETARGS)

tables: table-nn table-ntk

messages: $(STAMP)
	$(PY) -m ntk_vs_nn messages --out $(OUT) $(SETARGS)

# the theory experiments: ntk-vs-nn run NAME (default preset, output runs/NAME-PRESET unless OUT is given)
table-multiview table-gaussian table-channels: table-%: $(STAMP)
	$(PY) -m ntk_vs_nn run $* $(if $(filter command line,$(origin OUT)),--out $(OUT)) $(SETARGS)

# Nam et al.'s diversity-aware distillation (diversity.{md,csv}): Fashion-MNIST at CPU scale by default,
# DIVERSITY=diversity-cifar10 / diversity-cifar100 for GPUs; output runs/diversity-<preset>
DIVERSITY ?= diversity
table-diversity: $(STAMP)
	$(PY) -m ntk_vs_nn run diversity --preset $(DIVERSITY) $(if $(filter command line,$(origin OUT)),--out $(OUT)) $(SETARGS)

# the ResNet-18/Adam replication (nn table only, replication.{md,csv}): Fashion-MNIST at CPU scale by
# default, REPLICATION=replication-cifar10 for the recipe's scale (GPUs); output runs/<preset>-<dataset>
REPLICATION ?= replication
table-replication: $(STAMP)
	$(PY) -m ntk_vs_nn table nn --preset $(REPLICATION) $(if $(filter command line,$(origin OUT)),--out $(OUT)) $(SETARGS)

data-fashion-mnist:
	bash scripts/get_fashion_mnist.sh

# rewrite the numbers README.md and docs/ quote from results files (their <!-- q ... --> markers)
docs: $(STAMP)
	$(PY) -m ntk_vs_nn docs

report: $(STAMP)
	$(PY) -m ntk_vs_nn report --out $(OUT)

install-nt: $(STAMP)
	bash scripts/install_nt.sh $(VENV)

test-nt: install-nt
	VENV=$(VENV) bash scripts/test_nt.sh

test: $(STAMP) install-nt $(VENV)/.installed-ray
	$(PY) -m pytest -q -n auto --maxprocesses=4 --dist loadgroup --durations=25

lint: $(STAMP)
	$(VENV)/bin/ruff check ntk_vs_nn tests benchmarks scripts

bench: $(STAMP) install-nt $(VENV)/.installed-bench
	cd benchmarks && ../$(PY) ensemble_members.py
	cd benchmarks && ../$(PY) conv_choice.py
	cd benchmarks && ../$(PY) ynn_fusion.py
	cd benchmarks && ../$(PY) linearized_step.py
	cd benchmarks && ../$(PY) online_teacher.py
	cd benchmarks && ../$(PY) train_throughput.py
	cd benchmarks && ../$(PY) kernels_impl.py
	cd benchmarks && ../$(PY) kernels.py
	cd benchmarks && ../$(PY) peer_pytorch.py
	cd benchmarks && ../$(PY) quick_tables_wall.py
	cd benchmarks && ../$(PY) summary.py

clean:
	rm -rf $(VENV) .pytest_cache
