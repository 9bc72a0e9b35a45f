# The README's two commands: `make train` and `make test`.
# Each creates .venv when missing, installs the pinned toolchain, builds the extension
# without build isolation (again only when csrc/ or setup.py changed), then runs.
# PYTHON=python3 (any existing interpreter with torch) skips the venv and every install and
# builds the extension in place: for machines without a package registry.
VENV       ?= .venv
PYTHON     ?=
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
TOOLS      := ninja setuptools wheel numpy pillow tqdm matplotlib scipy pytest pytest-benchmark ruff onnx onnxscript onnxruntime
SOURCES    := setup.py pyproject.toml $(shell find csrc -type f)

TRAIN_ARGS ?= --dataset synthetic --epochs 3 --rewire-interval 10 --out runs/make-train
TEST_ARGS  ?=

ifeq ($(strip $(PYTHON)),)
PY    := $(VENV)/bin/python
BUILT := $(VENV)/.built
else
PY    := $(PYTHON)
BUILT := inplace
endif

.PHONY: train test lint build bench inplace clean gpu-check

$(VENV)/.installed:
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet $(TORCH_PINS) $(TOOLS)
	touch $@

$(VENV)/.built: $(VENV)/.installed $(SOURCES)
	$(PY) -m pip install --no-build-isolation --no-deps -v -e . >build.log 2>&1 || (tail -n 60 build.log; exit 1)
	touch $@

inplace:
	$(PY) setup.py build_ext --inplace >build.log 2>&1 || (tail -n 60 build.log; exit 1)

build: $(BUILT)
	$(PY) -m plasticnet info

train: build
	$(PY) -m plasticnet train $(TRAIN_ARGS)

test: build
	$(PY) -m pytest $(TEST_ARGS)

# ruff: lint and format check (pyproject.toml holds the settings, 120 columns).
lint: $(if $(strip $(PYTHON)),,$(VENV)/.installed)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

bench: build
	$(PY) -m plasticnet bench --quick

# On a lent GPU machine: `make gpu-check PYTHON=python3` builds for sm_90 in place, runs the GPU tests
# and benchmarks (op and overhead cases) into benchmarks/results/, in under 8 minutes; fails without a GPU.
gpu-check:
	PYTHON=$(PY) bash benchmarks/gpu_check.sh

clean:
	rm -rf build *.egg-info plasticnet/_C*.so plasticnet/_build_info.json build.log $(VENV)/.built
