"""Per-sample random streams depend only on (seed, index)."""

import pytest
import torch

from probneural.data.seeding import sample_generator, standard_normal


def test_generator_depends_only_on_seed_and_index():
    draw = lambda seed, index: torch.randn(4, generator=sample_generator(seed, index), dtype=torch.float64)  # noqa: E731
    assert torch.equal(draw(3, 7), draw(3, 7))
    assert not torch.equal(draw(3, 7), draw(3, 8))
    assert not torch.equal(draw(3, 7), draw(4, 7))
    assert not torch.equal(draw(0, 1), draw(1, 0))


def test_standard_normal_is_independent_of_chunking(device):
    whole = standard_normal(5, (3, 2), seed=11, device=device)
    parts = torch.cat(
        [
            standard_normal(2, (3, 2), seed=11, device=device),
            standard_normal(3, (3, 2), seed=11, start=2, device=device),
        ]
    )
    assert whole.shape == (5, 3, 2) and whole.dtype == torch.float64 and whole.device.type == device.type
    assert torch.equal(whole, parts)


def test_standard_normal_casts_after_drawing_in_float64():
    single = standard_normal(2, (8,), seed=1, dtype=torch.float32)
    double = standard_normal(2, (8,), seed=1)
    assert single.dtype == torch.float32
    assert torch.equal(single, double.to(torch.float32))


@pytest.mark.parametrize(
    ("seed", "index", "name"), [(-1, 0, "seed"), (0, -1, "index"), (1.5, 0, "seed"), (0, 2**64, "index")]
)
def test_invalid_seed_or_index(seed, index, name):
    with pytest.raises(ValueError, match=name):
        sample_generator(seed, index)
