"""Training images before and after a trial's augmentation, for a person to look at.

The lecture's question, "still a cat?", asks whether a setting such as ``augment.affine_p=0.5``
keeps the images recognizable. :func:`augmented_samples` answers it with the first images of the
training split, once as stored and once as the trial's augmenter changes them.
"""

from __future__ import annotations

import torch

from toolbox.config import TrialConfig
from toolbox.data import DataSplit, load_split

SAMPLE_COUNT = 8
"""How many training images a picture shows."""


@torch.no_grad()
def augmented_samples(
    config: TrialConfig, n: int = SAMPLE_COUNT, data: DataSplit | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` images of the training split, before and after the trial's augmentation.

    The images are those of the fixed split (``config.data``), so every trial of a sweep shows
    the same ones. The augmenter is the one training builds from ``config.augment``: every image
    draws its own transform, from a CPU generator seeded with ``config.seed``, so the picture
    is the same on every machine (the draws are fresh ones of the same distributions, not those
    of a particular training epoch). Both are in displayable [0, 1] form, before input
    normalization; additive noise, which training does not clamp, is clamped here for display.

    Args:
        config: the trial.
        n: how many images (fewer when the training split is smaller).
        data: a prepared split; by default ``load_split(config.data)`` on the CPU.

    Returns:
        (before, after): two (n, C, H, W) float32 CPU tensors in [0, 1]; ``after`` equals
        ``before`` when no augmentation is switched on.

    Raises:
        toolbox.errors.DataUnavailableError: the data set cannot be loaded.
    """
    split = data if data is not None else load_split(config.data)
    before = split.train_x[:n].to("cpu", torch.float32)  # (n, C, H, W)
    if not config.augment.enabled:
        return before, before.clone()
    # Imported here, as training does, so a picture without augmentation never needs it.
    from toolbox.augment import Augmenter

    generator = torch.Generator().manual_seed(config.seed)
    after = Augmenter(config.augment)(before, generator=generator)
    return before, after.clamp_(0.0, 1.0)
