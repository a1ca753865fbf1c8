# The README's two commands: `make demo` and `make test`. Each installs what it needs into .venv.
# Override TORCH to pick another build, e.g. `make demo TORCH="torch==2.13.0 --index-url <torch wheel index>"`.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
DEMO_ARGS ?=
# curvature libraries we compare against; they declare torchvision (a CUDA torch), hence --no-deps
CURVATURE_COMPARE ?= curvlinops-for-pytorch==3.0.1 backpack-for-pytorch==1.7.1 einconv==0.1.0 einops==0.8.2 \
	unfoldNd==0.2.3 linear_operator==0.6.1

.PHONY: demo test install install-dev clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first, so that nothing later resolves to a multi-GB CUDA build
$(VENV)/.torch: | $(PY)
	$(PIP) install -q $(TORCH)
	touch $@

# setup.py builds the optional C library of fused solver passes (probneural/data/spectral_passes.c)
$(VENV)/.base: pyproject.toml setup.py probneural/data/spectral_passes.c probneural/data/spectral_passes_body.h $(VENV)/.torch
	$(PIP) install -q -e .
	@$(PY) -c 'import torch; from probneural.data.spectral_passes import available; \
		print("fused Navier-Stokes passes (C library):", "built" if available(torch.zeros(1, dtype=torch.complex64)) \
		else "not built (no C compiler?): the solver runs torch operations")'
	touch $@

$(VENV)/.dev: pyproject.toml $(VENV)/.base
	$(PIP) install -q -e ".[dev,compare,fftw]"
	$(PIP) install -q --no-deps $(CURVATURE_COMPARE)
	touch $@

install: $(VENV)/.base
install-dev: $(VENV)/.dev

demo: install
	$(PY) -m probneural.train experiment=quickstart uq=laplace $(DEMO_ARGS)

test: install-dev
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
