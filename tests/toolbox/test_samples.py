"""The samples picture's data: the same training images before and after a trial's
augmentation."""

from __future__ import annotations

import torch

from toolbox.config import AugmentConfig, TrialConfig
from toolbox.data import load_split
from toolbox.samples import SAMPLE_COUNT, augmented_samples


def _config(seed: int = 0, **augment: float) -> TrialConfig:
    return TrialConfig(augment=AugmentConfig(**augment), seed=seed, device="cpu")


def test_before_is_the_first_training_images_in_unit_range() -> None:
    cfg = _config(affine_p=1.0, rotate_deg=30)
    before, after = augmented_samples(cfg)
    split = load_split(cfg.data)
    assert before.shape == after.shape == (SAMPLE_COUNT, *split.in_shape)
    assert torch.equal(before, split.train_x[:SAMPLE_COUNT])
    assert float(after.min()) >= 0.0 and float(after.max()) <= 1.0


def test_without_augmentation_after_equals_before() -> None:
    before, after = augmented_samples(_config())
    assert torch.equal(before, after)


def test_a_certain_horizontal_flip_mirrors_every_image() -> None:
    before, after = augmented_samples(_config(hflip_p=1.0), n=4)
    assert torch.equal(after, before.flip(-1))
    assert not torch.equal(after, before)


def test_the_same_seed_gives_the_same_picture_and_another_seed_another() -> None:
    settings = {"affine_p": 1.0, "rotate_deg": 30.0, "noise_std": 0.1}
    _, first = augmented_samples(_config(seed=3, **settings))
    _, again = augmented_samples(_config(seed=3, **settings))
    _, other = augmented_samples(_config(seed=4, **settings))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_noise_is_clamped_to_displayable_values() -> None:
    before, after = augmented_samples(_config(noise_std=2.0))
    assert not torch.equal(before, after)
    assert float(after.min()) >= 0.0 and float(after.max()) <= 1.0
