"""K-FAC against exact GGN blocks where it is exact, closed forms where it is not, and curvlinops (float64)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev

from probneural.hessian.ggn import functional_model, ggn_diagonal, ggn_operator, loss_hessian_sqrt
from probneural.hessian.kfac import (
    KFACVariant, KroneckerOperator, SpectralKroneckerBlock, augmented, kfac_operator, layer_moment, layer_rows,
)
from probneural.operators import FNO
from probneural.operators.pointwise import Pointwise

DOUBLE = {"dtype": torch.float64}


def exact_ggn(model, x, **options):
    model_fn, params = functional_model(model, x)
    return ggn_operator(model_fn, params, **options).to_dense()


def ggn_blocks(model, x, names, *, loss="mse", noise_variance=1.0):
    """The exact GGN block ``Jᵀ Λ J`` of the named parameters (the others held fixed), from the full Jacobian."""
    state = dict(model.named_parameters())
    params = tuple(state[name].detach() for name in names)

    def flat_fn(vector):
        pieces = vector.split([p.numel() for p in params])
        return functional_call(model, {n: v.view(p.shape) for n, v, p in zip(names, pieces, params)}, (x,))

    vector = torch.cat([p.reshape(-1) for p in params])
    output = flat_fn(vector)
    sqrt_lambda = loss_hessian_sqrt(loss, output, noise_variance).expand_as(output).reshape(-1, 1)
    rows = jacrev(flat_fn)(vector).reshape(output.numel(), -1) * sqrt_lambda
    return (rows.T @ rows).detach()


def kfac_blocks(operator):
    dense = operator.to_dense()
    blocks, start = [], 0
    for block in operator.blocks:
        blocks.append((block.names, dense[start:start + block.size, start:start + block.size]))
        assert not dense[start:start + block.size, :start].any()  # block-diagonal
        start += block.size
    return blocks


LOSSES = [("mse", 1.0), ("gaussian_nll", [0.5, 2.0, 4.0])]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("module, shape", [
    (Pointwise(3, 2), (4, 3, 5, 6)),  # a grid longer than the channels: one batched matmul
    (Pointwise(8, 2), (4, 8, 3)),  # a grid shorter than the channels: the rows
    (nn.Linear(3, 2), (4, 5, 3)),
])
def test_layer_moment_is_the_second_moment_of_the_layer_rows(module, shape, bias):
    features = shape[-1] if isinstance(module, nn.Linear) else shape[1]
    t = torch.randn(*shape[:-1], 2 * shape[-1], **DOUBLE)[..., ::2]  # not contiguous
    rows = augmented(layer_rows(t, module), bias)
    moment, count = layer_moment(t, module, bias)
    torch.testing.assert_close(moment, rows.T @ rows, rtol=1e-12, atol=1e-12)
    assert count == rows.shape[0] == t.numel() // features
    single, _ = layer_moment(t.float(), module, bias)
    assert single.dtype == torch.float32
    torch.testing.assert_close(single.double(), rows.T @ rows, rtol=1e-5, atol=1e-4)


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


@pytest.mark.parametrize("spectral", [False, True])
def test_chunked_forward_and_batches_accumulate_like_one_batch(spectral):
    x = torch.randn(3, 1, 5, 4, **DOUBLE)
    whole = kfac_operator(small_fno(), x, spectral=spectral).to_dense()
    chunked = kfac_operator(small_fno(cpu_chunk_bytes=1), (x[:2], x[2:]), spectral=spectral).to_dense()  # one sample per call
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("spectral", [False, True])
def test_monte_carlo_converges_to_exact(spectral):
    model = small_fno()
    x = torch.randn(2, 1, 5, 4, **DOUBLE)
    exact = kfac_operator(model, x, variant=KFACVariant.EXACT, spectral=spectral).to_dense()

    def error(n):  # averaged over seeds so that the decay is not a fluke of one draw
        return sum((kfac_operator(model, x, variant="mc", n_samples=n, seed=s, spectral=spectral).to_dense()
                    - exact).norm() for s in range(2)) / (2 * exact.norm())

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
    assert_linear_algebra(operator, dense)


def assert_linear_algebra(operator, dense):
    """The diagonal, products, solves and log-determinants of ``operator`` against its `(P, P)` matrix."""
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


# Spectral layers: per mode exact for one sample and one output direction, an approximation otherwise.


class ScalarReadout(nn.Module):
    """An FNO reduced to one number per sample by fixed weights: a single output direction per sample."""

    def __init__(self, fno, weights):
        super().__init__()
        self.fno = fno
        self.register_buffer("weights", weights)

    def forward(self, x):
        return (self.fno(x) * self.weights).flatten(1).sum(1, keepdim=True)


def spectral_blocks(operator):
    """``(names, dense block, SpectralKroneckerBlock)`` of every spectral weight."""
    return [(names, dense, block) for (names, dense), block in zip(kfac_blocks(operator), operator.blocks)
            if isinstance(block, SpectralKroneckerBlock)]


def mode_blocks(matrix, block):
    """The `(F, n, n)` diagonal blocks of a matrix over one spectral weight, one per mode (``n = 2 i o``)."""
    n = 2 * block.in_features * block.out_features
    return torch.stack([matrix[f * n:(f + 1) * n, f * n:(f + 1) * n] for f in range(block.modes)])


SPECTRAL_GRIDS = {"1d": ((3,), (7,)), "2d": ((2, 2), (5, 4)), "3d": ((2, 1, 2), (4, 3, 5))}  # modes, grid


@pytest.mark.parametrize("loss, noise", [("mse", 1.0), ("gaussian_nll", 0.5)])
@pytest.mark.parametrize("dims", list(SPECTRAL_GRIDS))
def test_spectral_blocks_are_exact_per_mode_for_one_sample_and_one_output_direction(dims, loss, noise):
    modes, grid = SPECTRAL_GRIDS[dims]
    torch.manual_seed(8)
    model = ScalarReadout(FNO(1, 2, modes, width=3, n_layers=2, projection_channels=4).double(),
                          torch.randn(2, *grid, **DOUBLE))
    x = torch.randn(1, 1, *grid, **DOUBLE)
    operator = kfac_operator(model, x, loss=loss, noise_variance=noise, spectral=True)
    assert operator.names == tuple(name for name, _ in model.named_parameters())
    blocks = spectral_blocks(operator)
    assert [names for names, *_ in blocks] == [("fno.spectral.0.weight",), ("fno.spectral.1.weight",)]
    for names, dense, block in blocks:
        expected = ggn_blocks(model, x, names, loss=loss, noise_variance=noise)
        torch.testing.assert_close(mode_blocks(dense, block), mode_blocks(expected, block), rtol=1e-10, atol=1e-10)
        assert not (dense - torch.block_diag(*mode_blocks(dense, block))).any()  # modes do not couple


def widely_linear(C, P):
    """The real `(2n, 2n)` matrix of ``u ↦ C u + P ū`` on interleaved (real, imaginary) coordinates."""
    n = C.shape[0]
    units = torch.view_as_complex(torch.eye(2 * n, **DOUBLE).view(2 * n, n, 2))  # row k: the k-th real unit vector
    return torch.view_as_real(units @ C.T + units.conj() @ P.T).reshape(2 * n, 2 * n).T


def real_view(v):
    return torch.view_as_real(v).flatten(-2)


@pytest.mark.parametrize("rank", [1, 6])
def test_spectral_block_is_the_widely_linear_k_fac_on_its_eigenbasis(rank):
    """``½ (H_A ⊗ H_B) u + ½ (S_A ⊗ S_B) ū`` with the second term kept on the 2 × 2 diagonal blocks of the
    eigenbasis ``q_a ⊗ p_b`` of ``H_A ⊗ H_B``; for one sample and one direction it is ``r rᵀ``."""
    torch.manual_seed(9)
    x, g = torch.randn(rank, 3, dtype=torch.complex128), torch.randn(rank, 2, dtype=torch.complex128)
    block = SpectralKroneckerBlock(("w",), (real_view(x).T @ real_view(x) / rank)[None],
                                   (real_view(g).T @ real_view(g))[None])
    ours = KroneckerOperator([block]).to_dense()
    h_a, s_a = x.conj().T @ x / rank, x.conj().T @ x.conj() / rank
    h_b, s_b = g.T @ g.conj(), g.T @ g
    widely = widely_linear(torch.kron(h_a, h_b) / 2, torch.kron(s_a, s_b) / 2)
    if rank == 1:
        r = real_view(torch.kron(x[0].conj(), g[0]))
        torch.testing.assert_close(ours, torch.outer(r, r), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(widely, torch.outer(r, r), rtol=1e-12, atol=1e-12)
        return
    J = torch.kron(torch.eye(6, **DOUBLE), torch.tensor([[0.0, -1.0], [1.0, 0.0]], **DOUBLE))  # u ↦ i u

    def complex_linear(M):
        return (M - J @ M @ J) / 2

    torch.testing.assert_close(complex_linear(ours), complex_linear(widely), rtol=1e-12, atol=1e-12)
    basis = torch.kron(torch.linalg.eigh(h_a)[1], torch.linalg.eigh(h_b)[1])  # columns q_a ⊗ p_b
    V = torch.stack((real_view(basis.T), real_view(1j * basis.T)), dim=1).reshape(12, 12).T  # (real, imaginary) per pair
    rotated, reference = V.T @ ours @ V, V.T @ widely @ V

    def pairs(M):
        return torch.diagonal(M.view(6, 2, 6, 2), dim1=0, dim2=2)  # (2, 2, 6) diagonal 2 × 2 blocks

    torch.testing.assert_close(rotated, torch.block_diag(*pairs(rotated).permute(2, 0, 1)), rtol=0, atol=1e-12)
    torch.testing.assert_close(pairs(rotated), pairs(reference), rtol=1e-12, atol=1e-12)


def test_spectral_blocks_approximate_the_per_mode_ggn_on_a_batch():
    """Many samples and output directions: an approximation (per-mode relative errors 2.0 % and 0.14 % here)."""
    torch.manual_seed(5)
    model = FNO(1, 2, (2, 2), width=3, n_layers=2, projection_channels=4).double()
    x = torch.randn(8, 1, 6, 6, **DOUBLE)
    errors = []
    for names, dense, block in spectral_blocks(kfac_operator(model, x, spectral=True)):
        expected = mode_blocks(ggn_blocks(model, x, names), block)
        errors.append(float((mode_blocks(dense, block) - expected).norm() / expected.norm()))
    assert 1e-4 < errors[0] < 0.05 and 1e-5 < errors[1] < 0.01, errors


def test_products_diagonal_solve_and_logdet_with_spectral_blocks():
    operator = kfac_operator(small_fno(), torch.randn(4, 1, 5, 4, **DOUBLE), loss="gaussian_nll",
                             noise_variance=[0.5, 2.0], spectral=True)
    dense = operator.to_dense()
    torch.testing.assert_close(dense, dense.T, rtol=0, atol=1e-12)
    assert torch.linalg.eigvalsh(dense).min() > -1e-12 * dense.abs().max()
    assert_linear_algebra(operator, dense)


def test_spectral_weights_are_opt_in_and_leave_the_other_blocks_unchanged():
    model = small_fno()
    x = torch.randn(2, 1, 5, 4, **DOUBLE)
    default, full = kfac_operator(model, x), kfac_operator(model, x, spectral=True)
    assert full.names == tuple(name for name, _ in model.named_parameters())
    assert default.names == tuple(name for name in full.names if not name.startswith("spectral."))
    others = [block for block in full.blocks if not isinstance(block, SpectralKroneckerBlock)]
    for ours, reference in zip(others, default.blocks, strict=True):
        torch.testing.assert_close(ours.input_factor, reference.input_factor, rtol=0, atol=0)
        torch.testing.assert_close(ours.output_factor, reference.output_factor, rtol=0, atol=0)


def test_spectral_factors_of_a_float32_model_in_float64():
    x = torch.randn(2, 1, 5, 4, **DOUBLE)
    reference = kfac_operator(small_fno(), x, spectral=True)
    promoted = kfac_operator(small_fno().float(), x.float(), spectral=True, dtype=torch.float64)
    for ours, expected in zip(spectral_blocks(promoted), spectral_blocks(reference), strict=True):
        assert ours[2].input_factor.dtype == torch.float64
        torch.testing.assert_close(ours[1], expected[1], rtol=1e-5, atol=1e-8)  # float32 weights, float64 maths


def test_bad_spectral_blocks():
    factor = torch.eye(4, **DOUBLE).expand(3, 4, 4)
    with pytest.raises(ValueError, match=r"names: expected \(weight,\)"):
        SpectralKroneckerBlock(("w", "b"), factor, factor)
    with pytest.raises(ValueError, match="input_factor: expected a stack of square matrices of even size"):
        SpectralKroneckerBlock(("w",), factor[:, :3, :3], factor)
    with pytest.raises(ValueError, match="output_factor: expected 3 modes"):
        SpectralKroneckerBlock(("w",), factor, factor[:2])
    with pytest.raises(ValueError, match="output_factor: expected the dtype"):
        SpectralKroneckerBlock(("w",), factor, factor.float())
    with pytest.raises(ValueError, match="model: expected a trainable nn.Linear, Pointwise or SpectralConv"):
        kfac_operator(nn.Sequential(nn.Tanh()), torch.randn(2, 2), spectral=True)
