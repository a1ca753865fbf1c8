"""Per-sample random streams: sample ``i`` of a data set depends only on ``(seed, i)``.

Every random draw of the data generators goes through :func:`standard_normal`, which
gives sample ``start + j`` its own CPU generator from :func:`sample_generator` and draws
in float64 before moving to the target device and dtype. A seed therefore fixes the
samples whatever the batch size, the split into chunks (``start``) and the device.
"""

from __future__ import annotations

import torch

from probneural.validation import check_int

_MASK64 = (1 << 64) - 1


def _splitmix64(state: int) -> int:
    """One step of the splitmix64 mixing function (Steele, Lea & Flood 2014) on a 64-bit integer."""
    z = (state + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _check_uint64(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if not 0 <= value <= _MASK64:
        raise ValueError(f"{name} must lie in [0, 2**64 - 1], got {value}")


def sample_generator(seed: int, index: int) -> torch.Generator:
    """A CPU generator for sample ``index`` of the data set drawn with ``seed``.

    The generator's seed is ``splitmix64(splitmix64(seed) ^ index)``: a fixed integer
    mixing, so neighbouring seeds and indices give unrelated streams and the stream of a
    sample never depends on how the data set is batched.

    Args:
        seed: data-set seed, an int in ``[0, 2**64 - 1]``.
        index: sample index, an int in ``[0, 2**64 - 1]``.

    Returns:
        A freshly seeded ``torch.Generator`` on the CPU.
    """
    _check_uint64("seed", seed)
    _check_uint64("index", index)
    generator = torch.Generator(device="cpu")
    generator.manual_seed(_splitmix64(_splitmix64(seed) ^ index))
    return generator


def standard_normal(
    n: int,
    shape: tuple[int, ...],
    *,
    seed: int,
    start: int = 0,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Independent standard normal draws, one block per sample, reproducible per sample.

    Block ``j`` is drawn in float64 on the CPU from ``sample_generator(seed, start + j)``,
    then the whole result is moved to ``device`` and cast to ``dtype``.

    Args:
        n: number of samples, ``n >= 1``.
        shape: shape of one sample's block.
        seed: data-set seed.
        start: index of the first sample in the data set.
        dtype: floating dtype of the result.
        device: device of the result (default: CPU).

    Returns:
        ``(n, *shape)`` tensor of i.i.d. ``N(0, 1)`` values.
    """
    check_int("n", n, 1)
    _check_uint64("start", start)
    noise = torch.empty((n, *shape), dtype=torch.float64)
    for j in range(n):
        noise[j].normal_(generator=sample_generator(seed, start + j))
    return noise.to(device=device, dtype=dtype)
