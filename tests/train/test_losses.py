"""Relative L2 / H1 losses and their finite differences against closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from probneural.train.losses import LOSSES, gradients, relative_h1, relative_l2

DOUBLE = {"dtype": torch.float64}


def node_grid(n):
    x = torch.linspace(0, 1, n, **DOUBLE)
    return torch.meshgrid(x, x, indexing="ij")


def test_gradients_converge_at_second_order_up_to_the_boundary():
    errors = []
    for n in (17, 33, 65, 129):
        x, y = node_grid(n)
        u = (torch.sin(2 * math.pi * x) * torch.cos(math.pi * y) + x**3 * y)[None, None]
        exact = (2 * math.pi * torch.cos(2 * math.pi * x) * torch.cos(math.pi * y) + 3 * x**2 * y,
                 -math.pi * torch.sin(2 * math.pi * x) * torch.sin(math.pi * y) + x**3)
        errors.append(max((du[0, 0] - e).abs().max().item() for du, e in zip(gradients(u), exact)))
    orders = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    assert all(1.9 < order < 2.1 for order in orders), orders


def test_relative_l2_is_the_batch_mean_of_per_sample_ratios_over_all_channels():
    target = torch.tensor([[[3.0, 0.0], [0.0, 4.0]], [[1.0, 0.0], [0.0, 0.0]]], **DOUBLE)  # (2, 2, 2): norms 5, 1
    error = torch.tensor([[[0.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [2.0, 0.0]]], **DOUBLE)  # norms 1, 2
    assert relative_l2(target + error, target).item() == pytest.approx((1 / 5 + 2 / 1) / 2, rel=1e-15)


def test_relative_h1_matches_the_closed_form_of_smooth_fields():
    """u = sin πx sin πy, e = ε sin 2πx sin 2πy on the unit square: ∫u² = 1/4, ∫|∇u|² = π²/2,
    ∫e² = ε²/4, ∫|∇e|² = 2π²ε²; the per-sample ratio is the square root of their quotient."""
    x, y = node_grid(257)
    u = torch.sin(math.pi * x) * torch.sin(math.pi * y)
    e = torch.sin(2 * math.pi * x) * torch.sin(2 * math.pi * y)
    epsilons = (0.1, 0.02)
    target = torch.stack([u, u])[:, None]
    pred = target + torch.stack([eps * e for eps in epsilons])[:, None]
    ratios = [math.sqrt((eps**2 / 4 + 2 * math.pi**2 * eps**2) / (1 / 4 + math.pi**2 / 2)) for eps in epsilons]
    assert relative_h1(pred, target).item() == pytest.approx(sum(ratios) / 2, rel=1e-3)
    assert relative_l2(pred[:1], target[:1]).item() == pytest.approx(0.1, rel=1e-3)  # ε ‖e‖/‖u‖ = ε


def test_losses_are_registered_and_check_their_inputs():
    assert LOSSES.get("rel_l2") is relative_l2 and LOSSES.get("rel_h1") is relative_h1
    with pytest.raises(ValueError, match="shapes differ"):
        relative_l2(torch.zeros(2, 1, 4), torch.zeros(2, 1, 5))
    with pytest.raises(ValueError, match="at least 3 points"):
        gradients(torch.zeros(1, 1, 2, 8))


def test_relative_h1_has_a_finite_gradient_at_an_exact_fit():
    y = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    pred = y.clone().requires_grad_()
    loss = relative_h1(pred, y)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(pred.grad).all()
