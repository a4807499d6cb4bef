"""Gaussian noise for CPU batches, mixed from two windows of a bank of normal numbers.

Each sample's noise is ``(s1 * A[a:a+n] + s2 * B[b:b+n]) / sqrt(2)``: one window from each half
(A, B) of a bank of :data:`BANK_SIZE` standard normal numbers, at offsets ``a``, ``b`` and with
signs ``s1``, ``s2`` drawn for that sample from the caller's generator. Every value is exactly
standard normal and the values within a sample are independent (its two windows never
overlap); two samples share (shifted) noise only where their windows overlap, which is
immaterial for augmentation. It is several times faster than ``torch.randn`` on the CPU, whose
generator draws normal numbers one at a time. The bank is a pure function of the generator's
initial seed, cached per process, so seeded runs repeat and resumed runs continue exactly.
GPU batches, and samples over :data:`_MAX_WINDOW` values, get fresh ``randn`` noise.
"""

from __future__ import annotations

import functools
import math

import torch

BANK_SIZE = 1 << 20
"""Normal numbers in the bank (4 MiB of float32), about 340 CIFAR images' worth."""
_HALF = BANK_SIZE // 2
_MAX_WINDOW = _HALF // 16
"""Samples larger than this (32,768 values, a 3x104x104 image) get fresh noise instead: their
windows would overlap too much."""
_CHUNK_VALUES = 1 << 18
"""The windows of about this many values (1 MiB) are read and added at a time."""
_SEED_SPAN = 1 << 32  # torch seeds its CPU generator (mt19937) with 32 bits


class NoiseBank:
    """Standard normal noise for CPU batches, two bank windows per sample (see the module)."""

    def __init__(self) -> None:
        self._buffer = torch.empty(0)  # the windows of a chunk of samples; see add_to

    def add_to(self, x: torch.Tensor, std: float, generator: torch.Generator | None) -> None:
        """Add ``std`` times standard normal noise to ``x`` (B, ...) in place, per sample.

        Args:
            x: a contiguous CPU batch; each ``x[i]`` gets its own noise.
            std: the noise's standard deviation.
            generator: draws the windows and signs; its initial seed picks the bank
                (``None``: torch's global generator).
        """
        b, n = x.shape[0], math.prod(x.shape[1:])
        if not b * n:
            return
        if n > _MAX_WINDOW:
            x.add_(torch.randn(x.shape, generator=generator, dtype=x.dtype), alpha=std)
            return
        bank = _bank((generator or torch.default_generator).initial_seed())
        windows = bank.as_strided((BANK_SIZE - n + 1, n), (1, 1))  # every window, as a view
        # One draw per window: its offset in its half, and its sign in the lowest bit.
        draws = torch.randint(2 * (_HALF - n + 1), (b, 2), generator=generator)  # (B, 2)
        starts = ((draws >> 1) + torch.tensor((0, _HALF))).view(-1)  # (2B,): one in each half
        signs = 1.0 - 2.0 * (draws & 1).to(x.dtype)  # (B, 2) of +-1
        coeffs = signs.mul_(std / math.sqrt(2.0)).view(b, 1, 2)
        # A chunk of samples at a time, into one small buffer reused across calls, so that the
        # windows are still in cache when added: all of a call's windows at once (12 MiB for
        # 512 CIFAR images) were slower in the training loop.
        chunk = max(1, _CHUNK_VALUES // (2 * n))
        if self._buffer.numel() < 2 * chunk * n:
            self._buffer = torch.empty(2 * chunk * n)
        flat = x.view(b, 1, n)
        for first in range(0, b, chunk):
            last = min(b, first + chunk)
            pairs = self._buffer[: 2 * (last - first) * n].view(2 * (last - first), n)
            torch.index_select(windows, 0, starts[2 * first : 2 * last], out=pairs)
            pairs = pairs.view(last - first, 2, n).to(x.dtype)
            flat[first:last].baddbmm_(coeffs[first:last], pairs)  # x += (s1, s2) @ windows


@functools.lru_cache(maxsize=4)
def _bank(seed: int) -> torch.Tensor:
    """(BANK_SIZE,) standard normal numbers for ``seed``, drawn once per process (about 5 ms).

    Cached like the data sets, so the trials of a sweep that run in one worker process, most of
    them with the same seed, share it; nothing writes to it.
    """
    # Not from the caller's own seed, whose stream the caller's other draws come from.
    private = torch.Generator().manual_seed((seed * 0x9E3779B1 + 0x7F4A7C15) % _SEED_SPAN)
    return torch.randn(BANK_SIZE, generator=private)
