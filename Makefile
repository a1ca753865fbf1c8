# The README's two commands: `make demo` and `make test`. Each installs what it needs into .venv.
# Override TORCH to pick another build, e.g. `make demo TORCH="torch==2.13.0 --index-url <torch wheel index>"`.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
DEMO_ARGS ?=

.PHONY: demo test install install-dev clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first, so that nothing later resolves to a multi-GB CUDA build
$(VENV)/.torch: | $(PY)
	$(PIP) install -q $(TORCH)
	touch $@

$(VENV)/.base: pyproject.toml $(VENV)/.torch
	$(PIP) install -q -e .
	touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.base
	$(PIP) install -q -e ".[dev,compare]"
	touch $@

install: $(VENV)/.base
install-dev: $(VENV)/.dev

demo: install
	$(PY) -m probneural.train experiment=quickstart $(DEMO_ARGS)

test: install-dev
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
