"""``dtype=torch.float64`` on a float32 model reproduces the float64 reference for every curvature object."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.func import functional_call

from probneural.hessian.ggn import functional_model, ggn_operator, hessian_operator
from probneural.hessian.kfac import kfac_operator
from probneural.hessian.last_layer import last_layer_ggn
from probneural.hessian.structure import cast
from probneural.operators import FNO

NOISE = {"loss": "gaussian_nll", "noise_variance": [0.5, 2.0]}


def models():
    """A float32 FNO, its float64 twin (same values) and a float32 input."""
    torch.manual_seed(0)
    model = FNO(1, 2, (2, 2), width=3, n_layers=1, projection_channels=4)
    x = torch.randn(2, 1, 5, 4)
    return model, copy.deepcopy(model).double(), x


def relative_error(a, b):
    return ((a.double() - b).norm() / b.norm()).item()


def squared_error(model_fn, y):
    return lambda params: 0.5 * (model_fn(params) - y).square().sum() + 0.1 * model_fn(params).tanh().sum()


def build(kind, model, x, dtype):
    if kind == "ggn":
        return ggn_operator(*functional_model(model, x), dtype=dtype, **NOISE)
    if kind == "hessian":
        model_fn, params = functional_model(model, x)
        return hessian_operator(squared_error(model_fn, torch.ones(1, 2, 5, 4)), params, dtype=dtype)
    if kind == "kfac":
        return kfac_operator(model, x, dtype=dtype, **NOISE)
    return last_layer_ggn(model, x, dtype=dtype, **NOISE)


@pytest.mark.parametrize("kind", ["ggn", "hessian", "kfac", "last_layer"])
def test_promotion_matches_the_float64_reference(kind):
    model, reference_model, x = models()
    reference = build(kind, reference_model, x.double(), None)
    promoted = build(kind, model, x, torch.float64)
    plain = build(kind, model, x, None)
    assert promoted.dtype == torch.float64 and plain.dtype == torch.float32
    V = torch.randn(reference.size, 4, dtype=torch.float64)
    expected = reference.matmat(V)
    assert relative_error(promoted.matmat(V), expected) < 1e-12
    assert relative_error(plain.matmat(V), expected) > 1e-10  # float32 round-off, which promotion removes
    v = V[:, 0].float()  # float32 vectors are promoted too
    assert promoted.matvec(v).dtype == torch.float64
    torch.testing.assert_close(promoted.matvec(v), reference.matvec(v.double()), rtol=1e-12, atol=1e-12)
    if kind != "hessian":
        torch.testing.assert_close(promoted.diagonal(), reference.diagonal(), rtol=1e-12, atol=1e-12)


def test_the_model_itself_is_left_untouched():
    model, _, x = models()
    before = {name: p.clone() for name, p in model.named_parameters()}
    kfac_operator(model, x, dtype=torch.float64)
    last_layer_ggn(model, x, dtype=torch.float64)
    for name, p in model.named_parameters():
        assert p.dtype == torch.float32 and p.grad is None and torch.equal(p, before[name])


def test_functional_model_follows_the_dtype_of_its_parameters():
    model, reference_model, x = models()
    model_fn, params = functional_model(model, x)
    assert model_fn(params).dtype == torch.float32
    out = model_fn(cast(params, torch.float64))
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, functional_call(reference_model, dict(reference_model.named_parameters()),
                                                    (x.double(),)), rtol=1e-13, atol=1e-13)


def test_cast_keeps_structure_and_complex_entries():
    z = torch.randn(3, dtype=torch.complex64)
    r = torch.randn(2)
    promoted = cast((z, r), torch.float64)
    assert [t.dtype for t in promoted] == [torch.complex128, torch.float64]
    assert cast(r, torch.float64).dtype == torch.float64 and isinstance(cast(r, torch.float64), torch.Tensor)
    assert cast((z, r), None) == (z, r)
    for bad in (torch.int64, torch.complex128, "float64"):
        with pytest.raises(ValueError, match="dtype: expected None or a real floating dtype"):
            cast(r, bad)


@pytest.mark.parametrize("kind", ["ggn", "kfac", "last_layer"])
def test_promotion_with_frozen_parts_matches_the_float64_reference(kind):
    # frozen parameters (the lifting here, a frozen trunk in the posterior heads) run in float64 too
    model, reference_model, x = models()
    for m in (model, reference_model):
        m.lifting.requires_grad_(False)
    reference = build(kind, reference_model, x.double(), None)
    promoted = build(kind, model, x, torch.float64)
    V = torch.randn(reference.size, 3, dtype=torch.float64)
    assert relative_error(promoted.matmat(V), reference.matmat(V)) < 1e-12


def test_ggn_vp_names_a_mismatched_direction():
    from probneural.hessian import ggn_vp

    model, _, x = models()
    model_fn, params = functional_model(model, x)
    with pytest.raises(ValueError, match="v: expected the structure, shapes and dtypes of params"):
        ggn_vp(model_fn, params, tuple(p[..., :1] for p in params))
    with pytest.raises(ValueError, match="v: expected"):
        ggn_vp(model_fn, params, tuple(p.double() for p in params))
