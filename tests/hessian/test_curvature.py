"""GGN products and diagonals against explicit Jacobians; Lanczos against eigvalsh; Hutchinson within 3 SE."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call, jacrev

import probneural.hessian.ggn as ggn_module
from probneural import hessian
from probneural.operators import FNO


def small_fno():
    torch.manual_seed(0)
    model = FNO(1, 2, (2, 2), width=3, n_layers=1, projection_channels=4).double()
    names = [name for name, _ in model.named_parameters()]
    x = torch.randn(2, 1, 5, 4, dtype=torch.double)

    def model_fn(params):
        return functional_call(model, dict(zip(names, params)), (x,))

    return model_fn, tuple(p.detach() for p in model.parameters())


def explicit_ggn(model_fn, params, noise_variance):
    sizes = [p.numel() for p in params]
    flat = torch.cat([p.reshape(-1) for p in params])

    def flat_fn(vector):
        return model_fn(tuple(piece.view(p.shape) for piece, p in zip(vector.split(sizes), params)))

    out = flat_fn(flat)
    J = jacrev(flat_fn)(flat).reshape(out.numel(), -1)
    lam = (1.0 / torch.as_tensor(noise_variance, dtype=out.dtype)).view(1, -1, 1, 1).expand_as(out).reshape(-1)
    return J.T @ (lam[:, None] * J)


@pytest.mark.parametrize("loss, noise", [("mse", 1.0), ("gaussian_nll", [0.5, 2.0])])
def test_ggn_products_and_diagonal_match_explicit_jacobians(loss, noise):
    model_fn, params = small_fno()
    expected = explicit_ggn(model_fn, params, noise if loss == "gaussian_nll" else 1.0)
    operator = hessian.ggn_operator(model_fn, params, loss=loss, noise_variance=noise)
    torch.testing.assert_close(operator.to_dense(), expected, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(operator.diagonal(), torch.diagonal(expected), rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(hessian.ggn_diagonal(model_fn, params, loss=loss, noise_variance=noise),
                               torch.diagonal(expected), rtol=1e-8, atol=1e-10)


def test_ggn_diagonal_in_blocks_of_outputs_equals_it_in_one(monkeypatch):
    # The Jacobian rows are formed in blocks of at most DIAGONAL_BLOCK_BYTES: a block of one output
    # and blocks that do not divide the outputs give the same diagonal.
    model_fn, params = small_fno()
    options = {"loss": "gaussian_nll", "noise_variance": [0.5, 2.0]}
    whole = hessian.ggn_diagonal(model_fn, params, **options)
    row_bytes = max(whole.numel(), model_fn(params).numel()) * whole.element_size()
    for rows in (1, 7):
        monkeypatch.setattr(ggn_module, "DIAGONAL_BLOCK_BYTES", rows * row_bytes)
        torch.testing.assert_close(hessian.ggn_diagonal(model_fn, params, **options), whole, rtol=1e-12, atol=1e-14)


def test_ggn_equals_the_hessian_for_a_model_linear_in_its_parameters():
    torch.manual_seed(3)
    X = torch.randn(6, 4, dtype=torch.double)
    y = torch.randn(6, 1, dtype=torch.double)
    w = torch.randn(4, 1, dtype=torch.double)
    ggn = hessian.ggn_operator(lambda p: (X @ p)[:, :, None], w, loss="gaussian_nll", noise_variance=0.25)
    exact = hessian.dense(lambda p: ((X @ p - y) ** 2).sum() / (2 * 0.25), w)
    torch.testing.assert_close(ggn.to_dense(), exact)
    torch.testing.assert_close(exact, X.T @ X / 0.25)


def test_hessian_operator_matches_dense():
    model_fn, params = small_fno()

    def f(p):
        return model_fn(p).pow(2).sum()

    torch.testing.assert_close(hessian.hessian_operator(f, params).to_dense(), hessian.dense(f, params),
                               rtol=1e-8, atol=1e-10)


def test_lanczos_top_eigenvalues_match_eigvalsh():
    torch.manual_seed(4)
    Q, _ = torch.linalg.qr(torch.randn(60, 60, dtype=torch.double))
    spectrum = torch.cat((torch.tensor([50.0, 20.0, 10.0, 5.0], dtype=torch.double), torch.rand(56, dtype=torch.double)))
    A = Q @ torch.diag(spectrum) @ Q.T
    operator = hessian.LinearOperator(60, lambda v: A @ v, dtype=torch.double, device=torch.device("cpu"))
    values, vectors = hessian.lanczos(operator, 4, n_iter=40)
    torch.testing.assert_close(values, torch.linalg.eigvalsh(A).flip(0)[:4], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(A @ vectors, vectors * values, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(vectors.T @ vectors, torch.eye(4, dtype=torch.double), rtol=0, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lanczos_does_not_depend_on_the_scale_of_the_operator(dtype):
    """A small operator (a mean-reduced loss, a flat minimum) is not mistaken for an invariant subspace."""
    torch.manual_seed(6)
    Q, _ = torch.linalg.qr(torch.randn(200, 200, dtype=torch.double))
    spectrum = torch.logspace(0, -3, 200, dtype=torch.double)
    errors = {}
    for scale in (1.0, 1e-6, 1e-12):
        A = (Q @ torch.diag(spectrum * scale) @ Q.T).to(dtype)
        operator = hessian.LinearOperator(200, lambda v, A=A: A @ v, dtype=dtype, device=torch.device("cpu"))
        values, _ = hessian.lanczos(operator, 5, n_iter=60)
        errors[scale] = ((values.double() / scale - spectrum[:5]).abs() / spectrum[:5]).max().item()
    assert errors[1.0] < (1e-4 if dtype == torch.float32 else 1e-8), errors
    assert max(errors.values()) < 3 * errors[1.0] + 10 * torch.finfo(dtype).eps, errors


def test_lanczos_with_an_outlying_top_eigenvalue_in_float32():
    """Once the dominant direction is in the basis, later steps are small against it: they are not
    breakdowns (a tolerance relative to the largest |α| seen restarted them, 1-23 % errors)."""
    torch.manual_seed(6)
    Q, _ = torch.linalg.qr(torch.randn(200, 200, dtype=torch.double))
    spectrum = torch.cat((torch.tensor([1e4], dtype=torch.double), torch.linspace(1.0, 0.5, 199, dtype=torch.double)))
    A = (Q @ torch.diag(spectrum) @ Q.T).float()
    operator = hessian.LinearOperator(200, lambda v: A @ v, dtype=torch.float32, device=torch.device("cpu"))
    values, _ = hessian.lanczos(operator, 5, n_iter=60)
    torch.testing.assert_close(values.double(), spectrum[:5], rtol=1e-3, atol=0)


def test_lanczos_finds_repeated_eigenvalues_with_their_multiplicity():
    # 2 I has a one-dimensional Krylov space from any start vector: Lanczos must restart to return k pairs
    identity = hessian.LinearOperator(4, lambda v: 2 * v, dtype=torch.double, device=torch.device("cpu"))
    values, vectors = hessian.lanczos(identity, 3)
    torch.testing.assert_close(values, torch.full((3,), 2.0, dtype=torch.double))
    torch.testing.assert_close(vectors.T @ vectors, torch.eye(3, dtype=torch.double), rtol=0, atol=1e-12)
    # a spectrum {5, 5, 5, 1, ..., 1}: the triple top eigenvalue and the next, with orthonormal eigenvectors
    torch.manual_seed(5)
    Q, _ = torch.linalg.qr(torch.randn(30, 30, dtype=torch.double))
    A = Q @ torch.diag(torch.cat((torch.full((3,), 5.0), torch.ones(27))).double()) @ Q.T
    operator = hessian.LinearOperator(30, lambda v: A @ v, dtype=torch.double, device=torch.device("cpu"))
    values, vectors = hessian.lanczos(operator, 4, n_iter=12)
    torch.testing.assert_close(values, torch.tensor([5.0, 5.0, 5.0, 1.0], dtype=torch.double), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(A @ vectors, vectors * values, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(vectors.T @ vectors, torch.eye(4, dtype=torch.double), rtol=0, atol=1e-10)


def test_lanczos_on_the_ggn_of_an_fno():
    model_fn, params = small_fno()
    operator = hessian.ggn_operator(model_fn, params)
    dense = operator.to_dense()
    values, _ = hessian.lanczos(operator, 3, n_iter=operator.size)
    torch.testing.assert_close(values, torch.linalg.eigvalsh(dense).flip(0)[:3], rtol=1e-8, atol=1e-8)


def _operator(matrix):
    return hessian.LinearOperator(matrix.shape[0], lambda v: matrix @ v, dtype=matrix.dtype, device=matrix.device)


def test_hutchinson_is_exact_on_a_diagonal_operator():
    diagonal = torch.linspace(-2.0, 3.0, 7, dtype=torch.double)
    estimate, stderr = hessian.hutchinson_diagonal(_operator(torch.diag(diagonal)), 5, seed=3)
    assert torch.equal(estimate, diagonal) and torch.equal(stderr, torch.zeros(7, dtype=torch.double))


def test_hutchinson_is_unbiased_with_the_known_variance():
    """Entry ``p`` of one probe is ``A_pp + Σ_{q≠p} A_pq z_p z_q``: variance ``σ_p² = Σ_{q≠p} A_pq²``.
    The standard errors must estimate it, and the errors scaled by the true ``σ_p / √n`` pooled over
    the entries must lie within 4 of their exact standard deviation (the entries share probes:
    ``Var = Σ_{p<q} A_pq² (1/σ_p + 1/σ_q)² / (n P²)``)."""
    torch.manual_seed(8)
    size, n = 40, 1000
    root = torch.randn(size, size, dtype=torch.double)
    matrix = root @ root.T / size + torch.eye(size, dtype=torch.double)
    estimate, stderr = hessian.hutchinson_diagonal(_operator(matrix), n, seed=1)
    off = matrix - torch.diag(matrix.diagonal())
    sigma = off.square().sum(1).sqrt()
    torch.testing.assert_close(stderr * n**0.5, sigma, rtol=0.12, atol=0)
    z = (estimate - matrix.diagonal()) / (sigma / n**0.5)
    assert z.abs().max() < 4.5
    pairs = torch.triu(off.square() * (1 / sigma[:, None] + 1 / sigma[None, :]).square(), diagonal=1).sum()
    pooled_sd = (pairs / size**2).sqrt()  # of the mean of z (the √n cancels)
    assert z.mean().abs() < 4 * pooled_sd, (z.mean(), pooled_sd)
    biased = (1.15 * estimate - matrix.diagonal()) / (sigma / n**0.5)  # a 15 % bias is caught
    assert biased.mean().abs() > 4 * pooled_sd


def test_hutchinson_on_the_ggn_of_an_fno_within_three_standard_errors():
    model_fn, params = small_fno()
    operator = hessian.ggn_operator(model_fn, params)
    estimate, stderr = hessian.hutchinson_diagonal(operator, 200, seed=1)
    exact = operator.diagonal()
    z = ((estimate - exact).abs() / stderr.clamp_min(1e-12))[stderr > 0]
    assert (z < 3).float().mean() > 0.99 and z.max() < 4.5


def test_bad_arguments_of_the_operator_helpers():
    with pytest.raises(ValueError, match="size must be an int >= 1"):
        hessian.LinearOperator(-1, lambda v: v, dtype=torch.float64, device=torch.device("cpu"))
    identity = hessian.LinearOperator(3, lambda v: v, dtype=torch.float64, device=torch.device("cpu"))
    for bad in (1, 2.5, "4"):
        with pytest.raises(ValueError, match="n_samples must be an int >= 2"):
            hessian.hutchinson_diagonal(identity, bad)
    broken = hessian.LinearOperator(3, lambda v: v * float("nan"), dtype=torch.float64, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="operator: its product with Lanczos vector 0 holds NaN or Inf"):
        hessian.lanczos(broken, 1)


def test_bad_arguments():
    operator = hessian.LinearOperator(3, lambda v: v, dtype=torch.float64, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="v: expected shape"):
        operator.matvec(torch.zeros(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="k: expected"):
        hessian.lanczos(operator, 5)
    with pytest.raises(ValueError, match="k must be an int"):
        hessian.lanczos(operator, 2.5)
    with pytest.raises(ValueError, match="n_iter must be an int"):
        hessian.lanczos(operator, 2, n_iter=2.5)
    with pytest.raises(ValueError, match="no exact diagonal"):
        operator.diagonal()
    with pytest.raises(ValueError, match="loss: expected one of"):
        hessian.loss_hessian_sqrt("l1", torch.zeros(1, 1, 2))


def test_hutchinson_trace_is_the_sum_of_the_diagonal_estimate_and_unbiased():
    matrix = torch.randn(30, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    matrix = matrix @ matrix.T
    operator = hessian.LinearOperator(30, lambda v: matrix @ v, dtype=torch.float64, device=torch.device("cpu"))
    trace, error = hessian.hutchinson_trace(operator, 50, seed=4)
    diagonal, _ = hessian.hutchinson_diagonal(operator, 50, seed=4)  # the same probes
    assert trace == pytest.approx(diagonal.sum().item(), rel=1e-12)
    assert abs(trace - matrix.trace().item()) < 3 * error
