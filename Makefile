# Every target sets itself up from nothing: a venv in .venv, the pinned torch stack,
# the package installed editable, and the extension fcos_fast._C (re)built when csrc/
# changes.
SHELL := /bin/bash
PYTHON_SYSTEM ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
EXTENSION := $(VENV)/.extension-built
CSRC := $(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh')
export MAX_JOBS ?= 2

.PHONY: demo test test-fast test-oldest bench gpu-check clean

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

# The oldest supported stack (torch 2.11, the GPU machine's): a second venv, the
# extension built for it in a copy of the tree (scripts/test_oldest_stack.sh).
OLDEST_VENV := .venv-oldest
OLDEST_PY := $(OLDEST_VENV)/bin/python
OLDEST_INSTALLED := $(OLDEST_VENV)/.installed

$(OLDEST_PY):
	$(PYTHON_SYSTEM) -m venv $(OLDEST_VENV)
	$(OLDEST_PY) -m pip install --quiet --upgrade pip

$(OLDEST_INSTALLED): requirements-oldest.txt requirements.txt requirements-dev.txt | $(OLDEST_PY)
	$(OLDEST_PY) -m pip install --quiet -r requirements-oldest.txt \
	  -r <(grep -vE '^(torch|torchvision)==' requirements.txt) -r requirements-dev.txt
	touch $@

# What the run must find built (tests/conftest.py): a backend that does not load fails
# the run rather than skipping its cases.
COMMA := ,
NVCC := $(if $(filter 1,$(FCOS_FAST_NO_CUDA)),,$(shell command -v nvcc 2>/dev/null))
TEST_REQUIRE := native,triton$(if $(NVCC),$(COMMA)native-cuda)

# Train on the built-in synthetic set, draw validation detections and the loss curves
# into runs/demo.
demo: $(EXTENSION)
	PYTHON=$(PY) bash scripts/demo.sh runs/demo

# The whole suite (the GPU check's rehearsal included), then the op, model and export
# tests on the oldest supported stack.
test: $(EXTENSION) $(OLDEST_INSTALLED)
	FCOS_FAST_TEST_REQUIRE=$(TEST_REQUIRE) $(PY) -m pytest -q
	bash scripts/test_oldest_stack.sh $(OLDEST_PY)

test-fast: $(EXTENSION)
	FCOS_FAST_TEST_REQUIRE=$(TEST_REQUIRE) $(PY) -m pytest -q -m "not slow"

test-oldest: $(OLDEST_INSTALLED)
	bash scripts/test_oldest_stack.sh $(OLDEST_PY)

# QUICK=1 keeps it short: 0.2 s of timing per op case, a 150-iteration side-by-side
# training run against torchvision instead of the default schedule, export latency at
# 192 px batch 2 only (0.3 s per case), evaluation throughput on 16 images per shape.
# bench_eval scores the demo's trained model (runs/demo, `make demo`) when it is there.
bench: $(EXTENSION)
	$(PY) -m benchmarks.run $(if $(QUICK),--quick)
	$(PY) -m benchmarks.train_vs_torchvision $(if $(QUICK),--quick)
	$(PY) -m benchmarks.bench_export $(if $(QUICK),--quick)
	$(PY) -m benchmarks.bench_eval $(if $(QUICK),--quick) $(if $(wildcard runs/demo/checkpoint.pt),--checkpoint runs/demo/checkpoint.pt)

# On a GPU machine: the whole check within its budget (BUDGET=480 seconds), results and
# logs in benchmarks/results/gpu_check. REHEARSE=1: every step's own code on the CPU.
GPU_CHECK_OUT ?= benchmarks/results/gpu_check
gpu-check:
	PYTHON=$(if $(REHEARSE),$(PY),$${PYTHON:-python3}) bash scripts/gpu_check.sh \
	  $(if $(REHEARSE),--rehearse) $(if $(BUDGET),--budget-s $(BUDGET)) $(GPU_CHECK_OUT)

clean:
	rm -rf build *.egg-info fcos_fast/_C*.so $(EXTENSION) $(OLDEST_VENV)
