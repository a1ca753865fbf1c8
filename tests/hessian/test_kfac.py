"""K-FAC against exact GGN blocks where it is exact, closed forms where it is not, and curvlinops (float64)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from probneural.hessian.ggn import functional_model, ggn_diagonal, ggn_operator
from probneural.hessian.kfac import KFACVariant, kfac_operator
from probneural.operators import FNO
from probneural.operators.pointwise import Pointwise

DOUBLE = {"dtype": torch.float64}


def exact_ggn(model, x, **options):
    model_fn, params = functional_model(model, x)
    return ggn_operator(model_fn, params, **options).to_dense()


def ggn_blocks(model, x, names, **options):
    """The exact GGN block of the named parameters (the others held fixed)."""
    state = dict(model.named_parameters())

    def model_fn(params):
        return functional_call(model, dict(zip(names, params)), (x,))

    return ggn_operator(model_fn, tuple(state[name].detach() for name in names), **options).to_dense()


def kfac_blocks(operator):
    dense = operator.to_dense()
    blocks, start = [], 0
    for block in operator.blocks:
        blocks.append((block.names, dense[start:start + block.size, start:start + block.size]))
        assert not dense[start:start + block.size, :start].any()  # block-diagonal
        start += block.size
    return blocks


LOSSES = [("mse", 1.0), ("gaussian_nll", [0.5, 2.0, 4.0])]


@pytest.mark.parametrize("loss, noise", LOSSES)
@pytest.mark.parametrize("bias", [True, False])
def test_single_linear_layer_on_one_input_equals_the_ggn(loss, noise, bias):
    torch.manual_seed(0)
    model = nn.Linear(4, 3, bias=bias).double()
    x = torch.randn(1, 4, **DOUBLE)
    operator = kfac_operator(model, x, loss=loss, noise_variance=noise)
    assert operator.names == (("weight", "bias") if bias else ("weight",))
    torch.testing.assert_close(operator.to_dense(), exact_ggn(model, x, loss=loss, noise_variance=noise),
                               rtol=0, atol=1e-10)


@pytest.mark.parametrize("activation", [nn.Identity, nn.Tanh], ids=["deep_linear", "mlp"])
@pytest.mark.parametrize("loss, noise", LOSSES[:1] + [("gaussian_nll", [0.5, 2.0])])
def test_each_block_is_the_exact_ggn_block_for_one_sample(activation, loss, noise):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 5), activation(), nn.Linear(5, 4), activation(), nn.Linear(4, 2)).double()
    x = torch.randn(1, 3, **DOUBLE)
    operator = kfac_operator(model, x, loss=loss, noise_variance=noise)
    assert operator.names == tuple(name for name, _ in model.named_parameters())
    for names, block in kfac_blocks(operator):
        expected = ggn_blocks(model, x, names, loss=loss, noise_variance=noise)
        torch.testing.assert_close(block, expected, rtol=1e-10, atol=1e-10)


def pointwise_net():
    return nn.Sequential(Pointwise(3, 4), nn.Tanh(), Pointwise(4, 2)).double()


@pytest.mark.parametrize("loss, noise", [("mse", 1.0), ("gaussian_nll", [0.5, 2.0])])
def test_pointwise_layers_at_a_single_grid_point_are_exact(loss, noise):
    torch.manual_seed(2)
    model = pointwise_net()
    x = torch.randn(1, 3, 1, 1, **DOUBLE)
    for names, block in kfac_blocks(kfac_operator(model, x, loss=loss, noise_variance=noise)):
        torch.testing.assert_close(block, ggn_blocks(model, x, names, loss=loss, noise_variance=noise),
                                   rtol=1e-10, atol=1e-10)


def test_pointwise_on_a_field_is_k_fac_expand_over_grid_points():
    """Every grid point counts as a sample: a Pointwise net on a field = the same MLP on its points."""
    torch.manual_seed(3)
    model = pointwise_net()
    mlp = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    mlp.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 3, 2, **DOUBLE)
    points = x.movedim(1, -1).reshape(-1, 3)
    torch.testing.assert_close(kfac_operator(model, x).to_dense(), kfac_operator(mlp, points).to_dense(),
                               rtol=1e-12, atol=1e-12)


def test_deep_linear_network_factors_match_their_closed_form_on_a_batch():
    """``y = W2 (W1 x + b1) + b2``, MSE: B2 = N I, B1 = N W2ᵀW2, A = mean of ã ãᵀ."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2)).double()
    x = torch.randn(7, 3, **DOUBLE)
    first, second = kfac_operator(model, x).blocks
    h = model[0](x).detach()
    ones = torch.ones(7, 1, **DOUBLE)
    W2 = model[1].weight.detach()
    torch.testing.assert_close(first.input_factor, torch.cat((x, ones), 1).T @ torch.cat((x, ones), 1) / 7)
    torch.testing.assert_close(first.output_factor, 7 * W2.T @ W2)
    torch.testing.assert_close(second.input_factor, torch.cat((h, ones), 1).T @ torch.cat((h, ones), 1) / 7)
    torch.testing.assert_close(second.output_factor, 7 * torch.eye(2, **DOUBLE))


def small_fno(**kwargs):
    torch.manual_seed(5)
    return FNO(1, 2, (2, 2), width=3, n_layers=1, projection_channels=4, **kwargs).double()


def test_the_read_out_block_of_an_fno_is_exact_on_a_batch():
    """For the last layer, K-FAC-expand is exact: Σ (e_m e_mᵀ Λ) ⊗ (φ̃ φ̃ᵀ) sums to N R Λ ⊗ mean(φ̃ φ̃ᵀ)."""
    model = small_fno()
    x = torch.randn(2, 1, 5, 4, **DOUBLE)
    options = {"loss": "gaussian_nll", "noise_variance": [0.5, 2.0]}
    names, block = kfac_blocks(kfac_operator(model, x, **options))[-1]
    assert names == ("projection_out.weight", "projection_out.bias")
    torch.testing.assert_close(block, ggn_blocks(model, x, names, **options), rtol=1e-10, atol=1e-10)


def test_chunked_forward_and_batches_accumulate_like_one_batch():
    x = torch.randn(3, 1, 5, 4, **DOUBLE)
    whole = kfac_operator(small_fno(), x).to_dense()
    chunked = kfac_operator(small_fno(cpu_chunk_bytes=1), (x[:2], x[2:])).to_dense()  # one sample per call
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-12)


def test_monte_carlo_converges_to_exact():
    model = small_fno()
    x = torch.randn(2, 1, 5, 4, **DOUBLE)
    exact = kfac_operator(model, x, variant=KFACVariant.EXACT).to_dense()

    def error(n):  # averaged over seeds so that the decay is not a fluke of one draw
        return sum((kfac_operator(model, x, variant="mc", n_samples=n, seed=s).to_dense() - exact).norm()
                   for s in range(2)) / (2 * exact.norm())

    errors = [error(n) for n in (4, 64, 1024)]
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < errors[0] / 6  # O(1/√n): 16× fewer → ideally ÷ 16 for 256× more samples
    assert errors[2] < 0.1


def kron_reference(block):
    """``B ⊗ A`` from torch.kron, permuted from the [W | b] row-major layout to [weight; bias]."""
    o, a = block.output_factor.shape[0], block.input_factor.shape[0]
    i = block.in_features
    layout = torch.arange(o * a).view(o, a)
    order = torch.cat((layout[:, :i].reshape(-1), layout[:, i:].reshape(-1)))  # weight entries, then bias
    return torch.kron(block.output_factor, block.input_factor)[order][:, order]


def test_products_diagonal_solve_and_logdet_against_dense_linear_algebra():
    torch.manual_seed(6)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2), nn.Tanh(), nn.Linear(2, 2, bias=False)).double()
    operator = kfac_operator(model, torch.randn(9, 3, **DOUBLE), loss="gaussian_nll", noise_variance=[0.5, 2.0])
    dense = torch.block_diag(*[kron_reference(block) for block in operator.blocks])
    torch.testing.assert_close(operator.to_dense(), dense, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(operator.diagonal(), torch.diagonal(dense), rtol=1e-12, atol=1e-12)
    v, V = torch.randn(operator.size, **DOUBLE), torch.randn(operator.size, 3, **DOUBLE)
    torch.testing.assert_close(operator.matvec(v), dense @ v)
    torch.testing.assert_close(operator.matmat(V), dense @ V)
    for damping in (1e-3, 0.5):
        damped = dense + damping * torch.eye(operator.size, **DOUBLE)
        torch.testing.assert_close(operator.solve(v, damping), torch.linalg.solve(damped, v), rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(operator.solve(V, damping), torch.linalg.solve(damped, V), rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(operator.logdet(damping), torch.logdet(damped), rtol=1e-10, atol=1e-10)


def test_bad_arguments():
    model = nn.Linear(2, 2)
    x = torch.randn(3, 2)
    with pytest.raises(ValueError, match="variant: expected one of"):
        kfac_operator(model, x, variant="type-3")
    with pytest.raises(ValueError, match="n_samples: expected at least 1"):
        kfac_operator(model, x, variant="mc", n_samples=0)
    with pytest.raises(ValueError, match="n_samples: only variant 'mc'"):
        kfac_operator(model, x, n_samples=5)
    with pytest.raises(ValueError, match="loss: expected one of"):
        kfac_operator(model, x, loss="l1")
    with pytest.raises(ValueError, match="model: expected a trainable nn.Linear or Pointwise"):
        kfac_operator(nn.Sequential(nn.Tanh()), x)
    with pytest.raises(ValueError, match="inputs: expected at least one input batch"):
        kfac_operator(model, [])
    with pytest.raises(ValueError, match="did not run"):
        kfac_operator(PartlyUsed(), x)
    operator = kfac_operator(model, x)
    with pytest.raises(ValueError, match="damping: expected a number >= 0"):
        operator.solve(torch.zeros(6), -1.0)
    with pytest.raises(ValueError, match=r"v: expected shape \(6,\) or \(6, k\)"):
        operator.solve(torch.zeros(5), 1.0)


class PartlyUsed(nn.Module):
    def __init__(self):
        super().__init__()
        self.used, self.unused = nn.Linear(2, 2), nn.Linear(2, 2)

    def forward(self, x):
        return self.used(x)


@pytest.mark.parametrize("shared", [False, True], ids=["mlp", "weight_sharing"])
def test_agrees_with_curvlinops(shared):
    curvlinops = pytest.importorskip("curvlinops", reason="comparison library; make test installs it with --no-deps (Makefile CURVATURE_COMPARE)")
    torch.manual_seed(7)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    X = torch.randn(6, 4, 3, **DOUBLE) if shared else torch.randn(6, 3, **DOUBLE)
    data = [(X[:4], torch.zeros(4, *X.shape[1:-1], 2, **DOUBLE)), (X[4:], torch.zeros(2, *X.shape[1:-1], 2, **DOUBLE))]
    params = list(model.parameters())
    eye = torch.eye(sum(p.numel() for p in params), **DOUBLE)
    loss = nn.MSELoss(reduction="sum")  # Σ (f − y)²: twice our ½ Σ (f − y)²
    reference = curvlinops.KFACLinearOperator(
        model, loss, params, data, fisher_type=curvlinops.FisherType.TYPE2, kfac_approx=curvlinops.KFACType.EXPAND,
        separate_weight_and_bias=False, check_deterministic=False,
    ) @ eye / 2
    ours = kfac_operator(model, (x for x, _ in data)).to_dense()
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    if not shared:
        ggn = curvlinops.GGNLinearOperator(model, loss, params, data, check_deterministic=False) @ eye / 2
        model_fn, flat = functional_model(model, X)
        torch.testing.assert_close(ggn_diagonal(model_fn, flat), torch.diagonal(ggn), rtol=1e-12, atol=1e-12)
