# The README's two commands: `make train` and `make test`.
# Both create .venv when missing, install the pinned toolchain, build the
# extension without build isolation, then run. PYTHON=python3 (or any existing
# interpreter) skips the venv and all installs: for machines without a registry.
VENV        ?= .venv
PYTHON      ?=
TORCH_PINS  := torch==2.14.1 torchvision==0.29.1
TOOLS       := ninja setuptools wheel numpy tqdm matplotlib pytest pytest-benchmark

ifeq ($(strip $(PYTHON)),)
PY       := $(VENV)/bin/python
SETUP    := $(VENV)/.installed
else
PY       := $(PYTHON)
SETUP    :=
endif

TRAIN_ARGS ?= --dataset synthetic --epochs 2 --out runs/make-train
TEST_ARGS  ?=

.PHONY: train test build bench clean

$(VENV)/.installed: setup.py
	test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	$(VENV)/bin/python -m pip install --upgrade pip
	$(VENV)/bin/python -m pip install $(TORCH_PINS) $(TOOLS)
	touch $@

build: $(SETUP)
	$(PY) -m pip install --no-build-isolation --no-deps -e . -v >build.log 2>&1 || (tail -n 80 build.log; exit 1)

train: build
	$(PY) -m plasticnet train $(TRAIN_ARGS)

test: build
	$(PY) -m pytest $(TEST_ARGS)

bench: build
	$(PY) -m plasticnet bench --quick

clean:
	rm -rf build *.egg-info plasticnet/*.so build.log
