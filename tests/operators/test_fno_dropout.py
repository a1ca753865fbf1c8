"""FNO's dropout option: exact no-op at p = 0, random masks only in training mode, config round-trip."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from probneural.operators import FNO, build


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
