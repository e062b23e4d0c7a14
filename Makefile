# Set-up and everyday commands. A fresh machine needs only `make demo` or `make test`:
# both create .venv and install in the order that works here (docs/install.md says why).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.rdtf-installed
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.torch_extensions
export RAY_USAGE_STATS_ENABLED := 0
export HF_HUB_OFFLINE := 1

.PHONY: install browser demo test lint bench clean

install: $(STAMP)

# 1. torch + torchvision first, pinned: without the pin open_clip pulls a newer torch and GBs of CUDA wheels.
# 2. everything else under constraints.txt.  3. prebuild DeepSpeed's shared-memory op once, into the project.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U "pip<26.2"
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	$(BIN)/python -c "from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder as B; B().load()" \
		|| echo "warning: DeepSpeed's shm op did not prebuild; it will build on first use"
	touch $(STAMP)

# Debian's chromium, for the test that opens `rdtf stats --html`'s page: installed when missing where this user may
# (root with apt-get, as on CI); elsewhere that test skips with a reason (never under CI=true).
browser:
	@command -v chromium >/dev/null || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
		else echo "note: chromium is not installed; the stats page's browser test will skip"; fi; }

demo: $(STAMP)
	$(BIN)/rdtf demo --out demo_out $(if $(INPUT),--input $(INPUT),)

test: $(STAMP) browser
	$(BIN)/python -m pytest -q -n 2 --durations=20 tests

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python bench/preprocess.py

clean:
	rm -rf demo_out .pytest_cache
