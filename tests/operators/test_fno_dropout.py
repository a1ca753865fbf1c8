"""FNO's dropout option: exact no-op at p = 0, random masks only in training mode, config round-trip."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from probneural.operators import FNO, ChannelDropout, build


def _pair(dropout: float) -> tuple[FNO, FNO]:
    torch.manual_seed(0)
    plain = FNO(1, 2, (4,), width=8, n_layers=3, projection_channels=16)
    dropped = FNO(1, 2, (4,), width=8, n_layers=3, projection_channels=16, dropout=dropout)
    dropped.load_state_dict(plain.state_dict())
    return plain, dropped


def test_zero_dropout_is_bit_identical_to_an_fno_without_the_option():
    plain, zero = _pair(0.0)
    x = torch.randn(3, 1, 16)
    assert not any(isinstance(m, nn.Dropout) for m in zero.modules())
    for mode in (True, False):
        plain.train(mode), zero.train(mode)
        assert torch.equal(plain(x), zero(x))
    assert plain.state_dict().keys() == zero.state_dict().keys()


def test_dropout_randomises_training_mode_only():
    plain, dropped = _pair(0.3)
    x = torch.randn(3, 1, 16)
    dropped.train()
    first, second = dropped(x), dropped(x)
    assert not torch.allclose(first, second)
    assert not torch.allclose(first, plain(x))
    dropped.eval(), plain.eval()
    assert torch.equal(dropped(x), plain(x))


def test_dropout_follows_every_hidden_activation():
    # n_layers − 1 Fourier-layer activations and the projection's: each output of ReLU is >= 0
    model = FNO(1, 1, (4,), width=8, n_layers=3, projection_channels=16, activation="relu", dropout=0.5)
    inputs = []
    model.dropout.register_forward_hook(lambda module, args, output: inputs.append(args[0]))
    model(torch.randn(2, 1, 16))
    assert [h.shape[1] for h in inputs] == [8, 8, 16]
    assert all((h >= 0).all() for h in inputs)


def test_config_round_trip_and_old_configs_default_to_no_dropout():
    model = FNO(1, 1, (4,), width=8, n_layers=2, dropout=0.2)
    assert model.config["dropout"] == 0.2
    clone = build("fno", **model.config)
    assert clone.config == model.config and clone.dropout.p == 0.2
    old = {k: v for k, v in model.config.items() if k != "dropout"}  # a checkpoint from before the option
    rebuilt = build("fno", **old)
    rebuilt.load_state_dict(model.state_dict())
    assert rebuilt.config["dropout"] == 0.0
    x = torch.randn(2, 1, 16)
    assert torch.equal(rebuilt(x), model.eval()(x))


@pytest.mark.parametrize("dropout", [-0.1, 1.0, 1.5])
def test_bad_dropout_is_rejected(dropout):
    with pytest.raises(ValueError, match="dropout"):
        FNO(1, 1, (4,), dropout=dropout)


def test_dropout_drops_whole_channels_so_passes_are_coherent_function_draws():
    torch.manual_seed(0)
    layer = ChannelDropout(0.5).train()
    x = torch.rand(64, 6, 7, 5) + 1.0
    mask = layer(x) / x  # one value per (sample, channel), shared by every grid point
    assert torch.equal(mask, mask[..., :1, :1].expand_as(mask))
    assert set(mask.unique().tolist()) == {0.0, 2.0}
    assert abs(mask[:, :, 0, 0].mean().item() - 1.0) < 0.1  # inverted dropout: unbiased
    layer.eval()
    assert torch.equal(layer(x), x)
    # through an FNO with dropout before the read-out: a pass minus the mean is a smooth field
    # (a per-point mask would leave spatially white deviations, lag-1 correlation ~ 0)
    model = FNO(1, 1, (4,), width=8, n_layers=2, projection_channels=16, dropout=0.5, dropout_layers="projection")
    inputs = torch.sin(torch.linspace(0, 6.283, 64)).expand(1, 1, 64)
    model.train()
    deviations = torch.stack([model(inputs) for _ in range(200)])[:, 0, 0] - model.eval()(inputs)[0, 0]
    lag1 = torch.corrcoef(torch.stack((deviations[:, :-1].reshape(-1), deviations[:, 1:].reshape(-1))))[0, 1]
    assert lag1 > 0.5
    with pytest.raises(ValueError, match=r"x: expected a field \(b, c, \*spatial\)"):
        ChannelDropout(0.5).train()(torch.ones(3, 4))


@pytest.mark.parametrize("layers", ["all", "projection"])
def test_dropout_draws_do_not_depend_on_how_the_batch_is_chunked(layers):
    """The masks of a pass are drawn for the whole batch before it is chunked: the same seed gives
    the same pass whatever cpu_chunk_bytes (and so the grid and batch size) is. Drawn per chunk they
    differed by up to 0.14 from the unchunked pass."""
    torch.manual_seed(0)
    model = FNO(1, 1, (4, 4), width=6, n_layers=3, projection_channels=10, dropout=0.3,
                dropout_layers=layers).double().train()
    x = torch.randn(8, 1, 16, 16, dtype=torch.float64)
    passes = []
    for chunk_bytes in (None, 10 * 16 * 16 * 8 * 2, 1):  # whole batch, chunks of 2, chunks of 1
        model.cpu_chunk_bytes = chunk_bytes
        torch.manual_seed(5)
        passes.append(model(x))
    assert model.chunk_size(x) == 1
    torch.testing.assert_close(passes[1], passes[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(passes[2], passes[0], rtol=1e-12, atol=1e-12)
    torch.manual_seed(5)
    masks = model.dropout_masks(x)
    assert [tuple(m.shape) for m in masks] == [(8, 6, 1, 1)] * (2 if layers == "all" else 0) + [(8, 10, 1, 1)]


def test_preset_masks_must_match_the_dropout_calls():
    layer = ChannelDropout(0.5).train()
    x = torch.ones(2, 3, 4)
    mask = layer.draw(2, 3, 1, torch.float32, torch.device("cpu"))
    with layer.using([mask]):
        assert torch.equal(layer(x), x * mask)
    with pytest.raises(RuntimeError, match="more dropout calls than masks"), layer.using([mask]):
        layer(x), layer(x)
    with pytest.raises(RuntimeError, match="2 masks given, fewer dropout calls"), layer.using([mask, mask]):
        layer(x)
