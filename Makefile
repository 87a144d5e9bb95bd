# Every target sets itself up from nothing: a venv in .venv, the pinned torch stack,
# the package installed editable, and the extension fcos_fast._C (re)built when csrc/
# changes.
SHELL := /bin/bash
PYTHON_SYSTEM ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
EXTENSION := $(VENV)/.extension-built
CSRC := $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h')
export MAX_JOBS ?= 2

.PHONY: demo test test-fast bench gpu-check clean

$(VENV)/bin/python:
	$(PYTHON_SYSTEM) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(INSTALLED): requirements.txt requirements-dev.txt | $(VENV)/bin/python
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	touch $@

# The editable install builds fcos_fast._C in place; rebuilt whenever a C++/CUDA source
# changes.
$(EXTENSION): $(INSTALLED) setup.py $(CSRC)
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	touch $@

# Train on the built-in synthetic set, draw validation detections and the loss curves
# into runs/demo.
demo: $(EXTENSION)
	PYTHON=$(PY) bash scripts/demo.sh runs/demo

test: $(EXTENSION)
	$(PY) -m pytest -q

test-fast: $(EXTENSION)
	$(PY) -m pytest -q -m "not slow"

# QUICK=1 keeps it short: 0.2 s of timing per op case, a 150-iteration side-by-side
# training run against torchvision instead of the default schedule, export latency at
# 192 px batch 2 only (0.3 s per case), evaluation throughput on 16 images per shape.
# bench_eval scores the demo's trained model (runs/demo, `make demo`) when it is there.
bench: $(EXTENSION)
	$(PY) -m benchmarks.run $(if $(QUICK),--quick)
	$(PY) -m benchmarks.train_vs_torchvision $(if $(QUICK),--quick)
	$(PY) -m benchmarks.bench_export $(if $(QUICK),--quick)
	$(PY) -m benchmarks.bench_eval $(if $(QUICK),--quick) $(if $(wildcard runs/demo/checkpoint.pt),--checkpoint runs/demo/checkpoint.pt)

gpu-check:
	bash scripts/gpu_check.sh benchmarks/results

clean:
	rm -rf build *.egg-info fcos_fast/_C*.so $(EXTENSION)
