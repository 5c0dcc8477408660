# Two entry points do all set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The demo needs only the core package; tests need the dev extra.
CORE_STAMP := $(VENV)/.installed-core
# Keep pytest to the machine's cores; CI machines have 2.
PYTEST_WORKERS ?= 2
DEMO_RUN ?= runs/demo

STUDY_SEEDS ?= 0-7
# The mnist1d study (make study-quick; 18 min 20 s on 2 idle cores in all, measured 2026-12-06).
STUDY_QUICK ?= runs/study
STUDY_QUICK_METHODS ?= independent,dml,okdph,okdph:mode=code
STUDY_QUICK_ANALYSES ?= fit,eigen,trace,sharpness,interp

.PHONY: venv demo train-demo test test-fast notebooks lint typecheck bench clean study \
	study-quick study-controls study-independent-init study-simplex docs validate

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e '.[dev]'
	# the dev extra includes the core install, so `make demo` after `make test` installs nothing
	touch $@ $(CORE_STAMP)

$(CORE_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e .
	touch $@

venv: $(STAMP)

## Train OKDPH on the embedded digits data, then analyse the run (fails if either step fails).
demo: $(CORE_STAMP)
	$(BIN)/okdph train --preset demo --out $(DEMO_RUN) --overwrite
	$(BIN)/landscape analyze $(DEMO_RUN)

## The flatness study on mnist1d: methods x 8 seeds, matched protocol, analysed and compared.
study-quick: $(CORE_STAMP)
	$(BIN)/okdph sweep --preset mnist1d --methods $(STUDY_QUICK_METHODS) --seeds $(STUDY_SEEDS) \
		--out $(STUDY_QUICK) --no-progress
	$(BIN)/landscape analyze $(STUDY_QUICK) --analyses $(STUDY_QUICK_ANALYSES) --k 1 --no-progress
	$(BIN)/landscape compare $(STUDY_QUICK)

## The flatness study on Fashion-MNIST: independent, DML, KDCL and OKDPH (paper and code
## readings) x 8 seeds, two ResNet-8s (8/16/32, the validated network) per run, matched protocol.
## What it tests (primary measures, analyses) is declared in $(STUDY_DECLARATION), written from
## `make validate`'s output before the study runs; the students are measured with the declared
## analyses, the hybrid by interp. `make study-controls`: SAM against independent, alike; the
## independent runs `make study` finished are copied from it (--share-from), not trained again.
STUDY ?= runs/study-fmnist
STUDY_CONTROLS ?= runs/study-fmnist-controls
STUDY_DECLARATION ?= studies/fmnist.json
STUDY_METHODS ?= independent,dml,kdcl,okdph,okdph:mode=code
STUDY_FMNIST_SET ?= model.widths=8,16,32
STUDY_CONTROL_METHODS ?= independent,sam
DECLARED = $(BIN)/python -c "import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])"

# $(call fmnist_study,OUT,METHODS[,SWEEP FLAGS[,COMPARE FLAGS]]): train, analyse (students, then
# the hybrid by interp), compare.
define fmnist_study
	@test -f $(STUDY_DECLARATION) || { echo "make $@: $(STUDY_DECLARATION) is missing: run \
	make validate, then declare the validated measures there (docs/results/fashion-mnist.md)"; \
	exit 2; }
	$(BIN)/okdph sweep --preset fmnist --set $(STUDY_FMNIST_SET) --methods $(2) \
		--seeds $(STUDY_SEEDS) --declare $(STUDY_DECLARATION) --out $(1) --no-progress $(3)
	$(BIN)/landscape analyze $(1) --analyses $$($(DECLARED) $(STUDY_DECLARATION) analyses) \
		--k 1 --samples $(FMNIST_SAMPLES) --members student_0,student_1 --no-progress
	$(BIN)/landscape analyze $(1) --analyses interp --k 1 --samples $(FMNIST_SAMPLES) --no-progress
	$(BIN)/landscape compare $(1) $(4)
endef

study: $(CORE_STAMP)
	$(call fmnist_study,$(STUDY),$(STUDY_METHODS))

study-controls: $(CORE_STAMP)
	$(call fmnist_study,$(STUDY_CONTROLS),$(STUDY_CONTROL_METHODS),$(if $(wildcard $(STUDY)/study.json),--share-from $(STUDY)),--reference sam)

## Which measures predict the generalisation gap on Fashion-MNIST: one ResNet-8 per run over a
## 2^4 grid (lr, batch size, weight decay, augmentation) x 2 seeds, every measure, validated;
## writes the declaration of `make study` ($(STUDY_DECLARATION)) by the rule of --declare.
## Resumable: a rerun skips finished runs and pieces. The measures are taken on 256 of the 1,000
## training images (every measure of a member: ~2.5 min on 2 cores; at 512, ~5 min, which would
## put the recipe past its 2-hour budget); the study analyses on the same 256.
VALIDATE ?= runs/validate-fmnist
VALIDATE_ANALYSES ?= fit,eigen,trace,sharpness,relflat,adaptive,pacbayes
FMNIST_SAMPLES ?= 256
validate: $(CORE_STAMP)
	$(BIN)/okdph sweep --preset fmnist-grid --methods independent --seeds 0-1 \
		--vary optim.lr=0.03,0.1 batch_size=32,128 optim.weight_decay=0,5e-4 augment=none,flip \
		--out $(VALIDATE) --no-progress
	$(BIN)/landscape analyze $(VALIDATE) --analyses $(VALIDATE_ANALYSES) --k 1 \
		--samples $(FMNIST_SAMPLES) --no-progress
	$(BIN)/landscape validate $(VALIDATE) --declare $(STUDY_DECLARATION)

## Students initialised independently: their barriers before and after weight matching
## (Entezari et al.'s conjecture on our methods), and every run's path on one PCA plane.
STUDY_INIT ?= runs/study-independent-init
study-independent-init: $(CORE_STAMP)
	$(BIN)/okdph sweep --preset mnist1d --methods independent,dml,okdph --seeds $(STUDY_SEEDS) \
		--set init=independent --out $(STUDY_INIT) --no-progress
	$(BIN)/landscape analyze $(STUDY_INIT) --analyses fit,interp --align weights --no-progress
	$(BIN)/landscape compare $(STUDY_INIT)
	$(BIN)/landscape trajectories $(STUDY_INIT) --no-progress

## Three students per run: the loss over each run's students' simplex, compared across methods.
STUDY_SIMPLEX ?= runs/study-simplex
study-simplex: $(CORE_STAMP)
	$(BIN)/okdph sweep --preset mnist1d --methods independent,dml,kdcl,okdph --seeds $(STUDY_SEEDS) \
		--set num_students=3 --out $(STUDY_SIMPLEX) --no-progress
	$(BIN)/landscape analyze $(STUDY_SIMPLEX) --analyses fit,interp,simplex --no-progress
	$(BIN)/landscape compare $(STUDY_SIMPLEX)

## Every test, slow end-to-end ones and the notebooks included.
test: $(STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) tests
	@if ls notebooks/*.ipynb >/dev/null 2>&1; then \
		LANDSCAPE_SMOKE=1 $(BIN)/python -m pytest --nbmake --nbmake-timeout=600 notebooks; \
	fi

## The fast subset, for the edit-test loop.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) -m "not slow" tests

## Lint, formatting and type checks (mypy reads its settings from pyproject.toml).
lint: $(STAMP)
	$(BIN)/ruff check okdph landscape tests analyses
	$(BIN)/ruff format --check okdph landscape tests analyses
	$(BIN)/mypy

## The type check alone.
typecheck: $(STAMP)
	$(BIN)/mypy

## The documentation site, built strictly (a warning is an error) into site/.
DOCS_STAMP := $(VENV)/.installed-docs
$(DOCS_STAMP): pyproject.toml $(STAMP)
	$(BIN)/python -m pip install -e '.[docs]'
	touch $@

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(BIN)/mkdocs build --strict

## Benchmarks against the other tools (installs the comparison extras).
bench: $(STAMP)
	$(BIN)/python -m pip install -e '.[compare]'
	$(BIN)/python analyses/benchmarks/run_all.py

clean:
	rm -rf $(VENV) build dist site *.egg-info .pytest_cache .ruff_cache
