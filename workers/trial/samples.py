"""The picture of a trial's augmentation: training images before and after, as a PNG.

A trial renders it once, at its first start (:mod:`workers.trial.pack`), and the service
uploads it to the trial's MLflow run as :data:`workers.events.SAMPLES_ARTIFACT`. torch and
matplotlib are imported inside the functions: the sweep's driver imports the trainable module,
never renders, and must not pay for either.
"""

from __future__ import annotations

import io
import textwrap
from typing import TYPE_CHECKING

from toolbox.config import AugmentConfig, TrialConfig

if TYPE_CHECKING:
    import torch
    from matplotlib.axes import Axes

    from toolbox.data import DataSplit

ROWS = ("original", "augmented")
DPI = 80
"""Resolution of the PNG: about 20 KB for eight images."""
_TITLE_WIDTH = 100  # characters per title line


def render_samples(config: TrialConfig, data: DataSplit | None = None) -> bytes:
    """The PNG of :func:`toolbox.samples.augmented_samples` for ``config``, titled with the
    trial's augmentation settings that are switched on.

    Raises:
        toolbox.errors.DataUnavailableError: the data set cannot be loaded.
    """
    from toolbox.samples import augmented_samples

    before, after = augmented_samples(config, data=data)
    return samples_png(before, after, augmentation_title(config.augment))


def augmentation_title(augment: AugmentConfig) -> str:
    """``augment: affine_p=0.5, rotate_deg=15``: the settings that are not zero (or ``no
    augmentation``)."""
    if not augment.enabled:
        return "no augmentation"
    on = [f"{name}={value:g}" for name, value in augment.model_dump().items() if value]
    return "augment: " + ", ".join(on)


def samples_png(before: torch.Tensor, after: torch.Tensor, title: str) -> bytes:
    """A two-row grid, ``original`` above ``augmented``, of (N, C, H, W) images in [0, 1].

    Rendered with matplotlib's Agg canvas directly, so no GUI backend or global pyplot state is
    involved (a trial worker may render several pictures, one per trial it runs).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = before.shape[0]
    fig = Figure(figsize=(max(n, 4) * 1.0, 2.7), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(textwrap.fill(title, _TITLE_WIDTH), fontsize=9)
    axes = fig.subplots(len(ROWS), n, squeeze=False)
    for row, (label, images) in enumerate(zip(ROWS, (before, after), strict=True)):
        for col in range(n):
            _show(axes[row][col], images[col])
        axes[row][0].set_ylabel(label, fontsize=9)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _show(ax: Axes, image: torch.Tensor) -> None:
    """One (C, H, W) image in [0, 1], pixels as squares (8x8 digits stay legible), no ticks."""
    pixels = image.detach().cpu().float().clamp(0.0, 1.0)
    if pixels.shape[0] == 1:
        ax.imshow(pixels[0].numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(pixels.permute(1, 2, 0).numpy(), interpolation="nearest")  # (H, W, C)
    ax.set_xticks([])
    ax.set_yticks([])
