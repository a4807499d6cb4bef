"""The CPU noise bank: exact distribution, independence, seeding and resuming."""

from __future__ import annotations

import math

import torch

from toolbox import noise
from toolbox.noise import NoiseBank


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _noise(
    shape: tuple[int, ...], generator: torch.Generator | None, bank: NoiseBank | None = None
) -> torch.Tensor:
    x = torch.zeros(shape)
    (bank or NoiseBank()).add_to(x, 1.0, generator)
    return x


def test_noise_is_standard_normal_in_every_sample() -> None:
    x = _noise((512, 3, 32, 32), _gen()).flatten(1)  # (B, n)
    assert abs(x.mean().item()) < 0.005 and abs(x.std().item() - 1.0) < 0.005
    # Each sample alone: no two windows cancel or double up.
    assert (x.std(dim=1) - 1.0).abs().max() < 0.1
    # Normal, not merely unit variance: the share within one standard deviation, and the tails.
    assert abs((x.abs() < 1).float().mean().item() - 0.6827) < 0.005
    assert abs((x.abs() > 3).float().mean().item() - 0.0027) < 0.0005


def test_std_scales_and_the_noise_adds_to_the_batch() -> None:
    x = torch.full((64, 1, 28, 28), 0.5)
    NoiseBank().add_to(x, 0.1, _gen())
    assert abs(x.mean().item() - 0.5) < 0.005 and abs(x.std().item() - 0.1) < 0.002


def test_values_within_a_sample_and_across_samples_are_uncorrelated() -> None:
    x = _noise((256, 3, 16, 16), _gen(1)).flatten(1)  # (B, n), n = 768
    lag1 = (x[:, 1:] * x[:, :-1]).mean().item()  # neighbours within a sample
    assert abs(lag1) < 0.01
    corr = torch.corrcoef(x)  # (B, B): sample against sample, pixel by pixel
    off_diagonal = corr[~torch.eye(len(x), dtype=torch.bool)]
    # Independent samples: about N(0, 1/n); a shared noise image would show as 1 or -1.
    assert off_diagonal.abs().max() < 6 / math.sqrt(x.shape[1])
    assert abs(off_diagonal.std().item() - 1 / math.sqrt(x.shape[1])) < 0.1 / math.sqrt(768)


def test_consecutive_batches_get_new_noise() -> None:
    bank, g = NoiseBank(), _gen(2)
    first, second = _noise((32, 3, 8, 8), g, bank), _noise((32, 3, 8, 8), g, bank)
    assert not torch.equal(first, second)
    assert torch.corrcoef(torch.stack((first.flatten(), second.flatten())))[0, 1].abs() < 0.05


def test_the_generator_alone_decides_the_noise() -> None:
    shape = (16, 3, 8, 8)
    assert torch.equal(_noise(shape, _gen(3)), _noise(shape, _gen(3)))  # fresh banks alike
    bank = NoiseBank()
    a, b = _noise(shape, _gen(3), bank), _noise(shape, _gen(4), bank)  # switching seeds
    assert torch.equal(_noise(shape, _gen(3), bank), a) and not torch.equal(a, b)


def test_a_generator_restored_from_its_state_continues_the_same_noise() -> None:
    g = _gen(5)
    _noise((8, 1, 8, 8), g)
    state = g.get_state()  # what a checkpoint keeps
    expected = _noise((8, 1, 8, 8), g)
    resumed = torch.Generator()
    resumed.set_state(state)
    assert torch.equal(_noise((8, 1, 8, 8), resumed), expected)


def test_large_samples_get_fresh_noise_of_the_same_distribution() -> None:
    n = noise._MAX_WINDOW + 1
    x = _noise((4, n), _gen())
    assert abs(x.std().item() - 1.0) < 0.01
    assert torch.equal(x, torch.randn((4, n), generator=_gen()))


def test_an_empty_batch_is_left_alone() -> None:
    x = torch.zeros(0, 3, 8, 8)
    NoiseBank().add_to(x, 1.0, _gen())
    assert x.shape == (0, 3, 8, 8)


def test_torch_global_generator_is_used_without_one() -> None:
    torch.manual_seed(6)
    first = _noise((4, 1, 8, 8), None)
    torch.manual_seed(6)
    assert torch.equal(_noise((4, 1, 8, 8), None), first)
