"""ChannelNormalizer: fitted statistics, round trips, variance mapping, resolution independence, state."""

import pytest
import torch

from probneural.data import ChannelNormalizer


@pytest.fixture
def fields():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8, 2, 16, 16, generator=generator, dtype=torch.float64)
    return x * torch.tensor([2.0, 0.01], dtype=torch.float64).view(1, 2, 1, 1) + torch.tensor(
        [5.0, -3.0], dtype=torch.float64
    ).view(1, 2, 1, 1)


def test_fitted_statistics(fields):
    norm = ChannelNormalizer.fit(fields)
    assert norm.mean.shape == norm.std.shape == (1, 2, 1, 1)
    expected_mean = fields.transpose(0, 1).reshape(2, -1).mean(dim=1)
    expected_std = fields.transpose(0, 1).reshape(2, -1).std(dim=1, correction=0)
    torch.testing.assert_close(norm.mean.flatten(), expected_mean)
    torch.testing.assert_close(norm.std.flatten(), expected_std)
    z = norm.encode(fields)
    torch.testing.assert_close(z.mean(dim=(0, 2, 3)), torch.zeros(2, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(
        z.std(dim=(0, 2, 3), correction=0), torch.ones(2, dtype=torch.float64), rtol=1e-10, atol=0
    )


def test_round_trip_and_variance(fields):
    norm = ChannelNormalizer.fit(fields)
    torch.testing.assert_close(norm.decode(norm.encode(fields)), fields, rtol=1e-13, atol=1e-13)
    variance = torch.rand(3, 2, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(norm.decode_variance(variance), variance * (norm.std + norm.eps) ** 2)
    # Variance of decoded samples is the decoded variance: decode is affine with slope std + eps.
    z = torch.randn(20000, 2, 1, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 0.5
    torch.testing.assert_close(
        norm.decode(z).var(dim=0, keepdim=True),
        norm.decode_variance(torch.full((1, 2, 1, 1), 0.25, dtype=torch.float64)),
        rtol=0.05,
        atol=0,
    )


def test_zero_shot_at_another_resolution(fields):
    norm = ChannelNormalizer.fit(fields)
    finer = torch.randn(3, 2, 32, 32, dtype=torch.float64)
    encoded = norm.encode(finer)
    assert encoded.shape == finer.shape
    torch.testing.assert_close(encoded, (finer - norm.mean) / (norm.std + norm.eps))
    assert norm.encode(torch.randn(3, 2, 7, dtype=torch.float64)).shape == (3, 2, 7)


def test_follows_input_dtype_and_device(fields, device):
    norm = ChannelNormalizer.fit(fields)
    x = fields.float().to(device)
    encoded = norm.encode(x)
    assert encoded.dtype == torch.float32 and encoded.device.type == device.type
    assert ChannelNormalizer.fit(x).mean.dtype == torch.float32
    assert float(ChannelNormalizer.fit(x).eps) == torch.finfo(torch.float32).eps


def test_state_dict_round_trip(fields):
    norm = ChannelNormalizer.fit(fields)
    rebuilt = ChannelNormalizer.from_state_dict(norm.state_dict())
    torch.testing.assert_close(rebuilt.encode(fields), norm.encode(fields), rtol=0, atol=0)
    other = ChannelNormalizer.fit(fields[:2] * 3)
    other.load_state_dict(norm.state_dict())
    torch.testing.assert_close(other.decode(fields), norm.decode(fields), rtol=0, atol=0)
    with pytest.raises(ValueError, match="missing"):
        ChannelNormalizer.from_state_dict({"mean": norm.mean})


def test_constant_channel_encodes_to_zero():
    x = torch.cat([torch.randn(4, 1, 8), torch.full((4, 1, 8), 7.0)], dim=1)
    encoded = ChannelNormalizer.fit(x).encode(x)
    assert torch.isfinite(encoded).all() and (encoded[:, 1] == 0).all()


def test_invalid_inputs_name_the_argument(fields):
    norm = ChannelNormalizer.fit(fields)
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 2"):
        norm.encode(torch.zeros(1, 3, 4, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="variance must have shape"):
        norm.decode_variance(torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="x contains NaN"):
        ChannelNormalizer.fit(torch.full((2, 1, 4), float("nan")))
    with pytest.raises(ValueError, match="x must be a floating tensor"):
        ChannelNormalizer.fit(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="std must have"):
        ChannelNormalizer(torch.zeros(1, 2, 1), torch.ones(1, 3, 1))


def test_integer_fields_are_refused_with_the_name_given(fields):
    normalizer = ChannelNormalizer.fit(fields)
    with pytest.raises(ValueError, match="x must be a floating-point tensor, got dtype torch.int64"):
        normalizer.encode(torch.full((1, fields.shape[1], 4), 3))
    with pytest.raises(ValueError, match=r"y must have shape \(batch, "):
        normalizer.encode(torch.zeros(1, fields.shape[1] + 1, 4), "y")
