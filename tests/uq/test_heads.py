"""What every posterior head shares: its algebra ignores the caller's mixed-precision autocast."""

from __future__ import annotations

import pytest
import torch

from probneural import uq
from probneural.operators import FNO

OPTIONS = {
    "gp_exact": {"epochs": 5},
    "gp_svgp": {"epochs": 2, "inducing": 8},
    "pyro_svi": {"epochs": 3, "points": 16, "samples": 8},
}


@pytest.mark.parametrize("method", sorted(OPTIONS))
def test_a_head_fitted_and_used_under_bfloat16_autocast_computes_what_it_computes_without(method):
    torch.manual_seed(0)
    model = FNO(1, 1, [4], width=4, n_layers=2, projection_channels=8)  # float32: autocast would cast it
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(4, 1, 16, generator=generator)
    with torch.no_grad():
        y = model(x) + 0.3 * torch.sin(3 * x)
    loader = [(x[:2], y[:2]), (x[2:], y[2:])]

    def fit_and_predict():
        torch.manual_seed(2)  # Pyro's draws at prediction
        prediction = uq.fit(method, model, loader, **OPTIONS[method]).predict(x)
        return prediction.mean, prediction.variance

    reference = fit_and_predict()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(x).dtype == torch.bfloat16  # the operator itself does run in bfloat16 here
        under_autocast = fit_and_predict()
    for ours, expected in zip(under_autocast, reference):
        assert ours.dtype == torch.float32
        torch.testing.assert_close(ours, expected, rtol=0, atol=0)
