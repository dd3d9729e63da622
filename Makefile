# Two entry points for a fresh Debian machine: `make train` and `make test`.
# Each creates .venv, installs the pinned package (with oneDNN from PyPI on Linux x86-64), builds
# the oneDNN convolution handlers and makes sure Fashion-MNIST is present; a re-run with nothing
# changed skips all of that.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The oneDNN custom-call handlers (segae_jax/native); a failed build warns and leaves the models
# on XLA's convolutions, so the stamp records the attempt, not a success.
NATIVE_STAMP := $(VENV)/.native-stamp
NATIVE_SRC := segae_jax/native/onednn_conv.cc segae_jax/native/build.py
# PyTorch for `make bench`'s side-by-side figures, in its own venv (the project never imports it).
TORCH_VENV := .venv-torchref
CONFIG ?= configs/default.py
WORKDIR ?= runs/default
# 4 forced CPU devices let the tests exercise pmap and sharded jit on one machine.
TEST_ENV := XLA_FLAGS=--xla_force_host_platform_device_count=4
# Test processes; each allocates accelerator memory as it needs it, so several share one GPU.
TEST_WORKERS ?= 2
TEST_ENV += XLA_PYTHON_CLIENT_PREALLOCATE=false

.PHONY: install data train test test-faults test-slow bench profile clean

install: $(NATIVE_STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,bench]'
	touch $(STAMP)

$(NATIVE_STAMP): $(STAMP) $(NATIVE_SRC)
	$(BIN)/python -m segae_jax.native.build
	touch $(NATIVE_STAMP)

$(TORCH_VENV)/bin/python:
	$(PYTHON) -m venv $(TORCH_VENV)
	$(TORCH_VENV)/bin/pip install --quiet --disable-pip-version-check torch==2.13.0 numpy

data: $(NATIVE_STAMP)
	$(BIN)/python -m segae_jax.data.fetch

train: data
	$(BIN)/python train.py --config=$(CONFIG) --workdir=$(WORKDIR)

# The default suite in TEST_WORKERS processes (pytest-xdist), a whole file per process so that
# module fixtures train once: most of its time is single-threaded XLA compilation, so 2
# processes on 2 cores take about 0.55x the time of one. (--dist=loadgroup would also keep the
# session fixtures' users together, but xdist 3.8 cannot rename pytest 9.2's node ids.)
test: data
	$(TEST_ENV) $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist=loadfile --durations=15

# Subprocess runs killed with SIGKILL/SIGTERM/SIGINT, resumed on other device counts, two
# processes on 127.0.0.1, the shipped configs' recorded runs, and the longest end-to-end checks
# (reduced precision, probe): about 17 minutes on 2 cores (docs/testing.md).
test-faults: data
	$(TEST_ENV) $(BIN)/python -m pytest -q -m faults

# Speed and memory figures (JSON lines, benchmarks/results/results.json); about 45 minutes on 2
# cores: the side-by-side rounds against PyTorch (in .venv-torchref, made here on first use; 4
# rounds of float32 and bfloat16, about 18, resumed from
# benchmarks/results/side_by_side_<date>.jsonl if stopped), the thread settings about 4, the
# streaming figures (20,000 generated 256x256 images) about 10.
bench: data $(TORCH_VENV)/bin/python
	$(BIN)/python -m benchmarks.run --torch_python=$(TORCH_VENV)/bin/python

# Where a CPU step spends its time: per-layer convolution timings and a traced step by op
# category (JSON lines, benchmarks/results/profile.json); about 2 minutes on 2 cores.
profile: data
	$(BIN)/python -m benchmarks.profile_convs

# Long trainings: XLA's optimised code (the default suite compiles at -O0, see tests/conftest.py).
test-slow: data
	$(TEST_ENV) SEGAE_FAST_COMPILE=0 $(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) $(TORCH_VENV) *.egg-info
