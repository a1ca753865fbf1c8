# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # ProbNeural quick start: Darcy flow with a Fourier neural operator
#
# Everything here is the Python API — no Hydra, no config files. We generate Darcy data
# as in the FNO paper, train an FNO, test it at its resolution and zero-shot at twice
# the resolution, look at a prediction, and fit a Laplace posterior for calibrated bands.
#
# Set `PROBNEURAL_SMOKE=1` to run it in seconds (the test suite does).

# %%
import os

import matplotlib.pyplot as plt
import torch

import probneural as pn
from probneural.data import darcy
from probneural.operators import FNO

pn.allocator.keep_freed_memory()  # CPU on Linux: reuse freed tensor memory instead of page-faulting (ADR 0012)
smoke = os.environ.get("PROBNEURAL_SMOKE") == "1"
n_train, n_val, n_test, epochs = (24, 8, 8, 2) if smoke else (256, 32, 64, 20)
coarse, fine, solve = (17, 33, 33) if smoke else (33, 65, 129)
print("probneural", pn.__version__, "| torch", torch.__version__)

# %% [markdown]
# ## Data
# `a` is 12 where a Gaussian random field with covariance $(-\Delta + 9I)^{-2}$ is non-negative
# and 3 elsewhere; $-\nabla\cdot(a\nabla u) = 1$ with $u = 0$ on the boundary is solved on a fine
# grid and subsampled. A seed fixes the samples.

# %%
data = darcy.generate(n=n_train + n_val + n_test, resolution=coarse, solve_resolution=solve, seed=0, progress=False)
train, held_out = data.split(n_train)
val, test = held_out.split(n_val)  # the per-epoch error is the validation split's: the test split stays unseen
zero_shot = darcy.generate(n=n_test, resolution=fine, solve_resolution=solve, seed=1, progress=False)
print(train, "\n", zero_shot)

# %% [markdown]
# `darcy.solve` works on any coefficient and source, batched:

# %%
u = darcy.solve(train.x[:2, 0].double(), 1.0)
# the stored u were solved on the finer solve grid and subsampled: this coarse re-solve differs from them by
# the coarse grid's discretisation error (a few per cent of max u here), not by round-off
difference = (u.float() - train.y[:2, 0]).abs().max().item()
print(f"max |u - stored u| = {difference:.2e} (max u {train.y[:2].max().item():.2e})")

# %% [markdown]
# ## Model and training
# `normalize` wraps the operator with per-channel normalisers fitted on the training split,
# so the model maps raw fields to raw fields at any resolution.

# %%
torch.manual_seed(0)
operator = FNO(in_channels=1, out_channels=1, modes=(8, 8) if not smoke else (4, 4), width=24, n_layers=4)
model = pn.train.normalize(operator, train)
trainer = pn.train.Trainer(epochs=epochs, batch_size=16, lr=1e-3, step_size=10, gamma=0.5, progress=not smoke)
history = trainer.fit(model, train, val)
print(f"{sum(p.numel() for p in operator.parameters()):,} parameters; last epoch {history[-1]}")

# %% [markdown]
# ## Evaluation at the training resolution and zero-shot at twice it

# %%
for name, split in (("test", test), ("zero-shot", zero_shot)):
    scores = pn.train.evaluate(model, split)
    print(f"{name:10s} s={split.spatial_shape[0]}: relative L2 {scores['rel_l2']:.4f}, relative H1 {scores['rel_h1']:.4f}")

# %%
with torch.no_grad():
    pred = model(zero_shot.x[:1])
fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
for ax, field, title in zip(axes, (zero_shot.y[0, 0], pred[0, 0], (pred - zero_shot.y[:1])[0, 0].abs()),
                            ("truth", "prediction (zero-shot)", "|error|")):
    ax.imshow(field.T.numpy(), origin="lower", extent=(0, 1, 0, 1))  # axis 0 is x
    ax.set_title(title)
plt.show()

# %% [markdown]
# ## Uncertainty: a Laplace posterior on the read-out, calibrated by conformal prediction
# The last-layer Laplace approximation (closed form, prior precision and noise chosen by the
# marginal likelihood) turns the trained operator into a Gaussian predictive for whole fields.
# Its intervals come from a model of the errors and can under- or over-cover; split conformal
# prediction rescales them on held-out samples so that they cover at the level asked for.
# `uq.fit` takes re-iterable `(x, y)` batches, e.g. a `DataLoader`; `uq.METHODS.names()` lists
# the other methods.

# %%
from torch.utils.data import DataLoader

laplace = pn.uq.fit("laplace", model, DataLoader(train, batch_size=16))
# held-out samples (a seed of their own); at α = 0.1 conformal needs n >= 1/α − 1 = 9, more gives steadier bands
calibration = darcy.generate(n=max(n_test, 19), resolution=coarse, solve_resolution=solve, seed=2, progress=False)
conformal = pn.uq.fit("conformal", laplace, DataLoader(calibration, batch_size=16), alpha=0.1)
for name, posterior in (("laplace", laplace), ("conformal on laplace", conformal)):
    scores = pn.uq.evaluate(pn.uq.predict_in_batches(posterior, test.x), test.y, alpha=0.1)
    print(f"{name:21s} test coverage of the 90% intervals {scores['coverage']:.3f}, mean width {scores['width']:.3g}")
