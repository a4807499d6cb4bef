"""Batched, per-sample data augmentation on the batch's device.

torchvision's v2 transforms, applied to a batch, draw one transform for the whole batch. Here
every sample draws its own flips, affine transform, colour change and noise, fully batched (no
per-sample Python loop) on whatever device the batch lives on, with all randomness taken from a
caller-supplied generator so seeded runs repeat exactly.

Order: flips, affine, colour-scheme change, additive Gaussian noise.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from toolbox.config import AugmentConfig

# Columns of the one uniform draw per batch (B, _N_DRAWS). Every tool's column is always drawn,
# whether the tool is on or not, so switching one tool off does not change another's draws.
_HFLIP, _VFLIP = 0, 1
_AFFINE = slice(2, 8)  # mask, angle, tx, ty, scale, shear
_COLOUR = slice(8, 13)  # mask, brightness, contrast, saturation, hue
_SHUFFLE, _PERM_KEYS, _INVERT = 13, slice(14, 17), 17
_N_DRAWS = 18

_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 weights, as torchvision's rgb_to_grayscale


@functools.lru_cache(maxsize=8)
def _luma(device: torch.device) -> torch.Tensor:
    """(3,) luma weights on ``device``, made once: a fresh host tensor would be a copy per batch."""
    return torch.tensor(_LUMA, device=device)


def _sym(u: torch.Tensor, r: float) -> torch.Tensor:
    """Map uniform [0, 1) draws to uniform [-r, r)."""
    return (2.0 * u - 1.0) * r


def affine_theta(
    angle: torch.Tensor,
    translate: torch.Tensor,
    scale: torch.Tensor,
    shear: torch.Tensor,
    size: tuple[int, int],
) -> torch.Tensor:
    """Per-sample ``theta`` for :func:`torch.nn.functional.affine_grid` (align_corners=False).

    The forward map, about the image centre in pixel units with y pointing down, is
    ``p' = scale * R(angle) @ Shear(shear) @ p + translate * (W, H)``; ``affine_grid`` wants its
    inverse, in coordinates normalized to [-1, 1] per axis (so non-square images rotate
    correctly).

    Args:
        angle: (B,) rotation in radians; positive turns the content counter-clockwise.
        translate: (B, 2) shift (x, y) as a fraction of the width and height.
        scale: (B,) zoom factor; above 1 enlarges the content.
        shear: (B,) x-shear angle in radians (x' = x + tan(shear) * y).
        size: (H, W) of the images.

    Returns:
        (B, 2, 3) matrices mapping output coordinates to input coordinates.
    """
    h, w = size
    cos, sin, k = torch.cos(angle), torch.sin(angle), torch.tan(shear)
    inv = 1.0 / scale
    # inverse of s * R @ Sh = (1/s) * Sh^-1 @ R^-1, conjugated by diag(W/2, H/2)
    a00, a01 = (cos - k * sin) * inv, (-sin - k * cos) * inv * (h / w)
    a10, a11 = sin * inv * (w / h), cos * inv
    tx, ty = 2.0 * translate[:, 0], 2.0 * translate[:, 1]  # in normalized units
    row0 = torch.stack((a00, a01, -(a00 * tx + a01 * ty)), dim=-1)
    row1 = torch.stack((a10, a11, -(a10 * tx + a11 * ty)), dim=-1)
    return torch.stack((row0, row1), dim=1)  # (B, 2, 3)


def warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample ``x`` (B, C, H, W) with per-sample ``theta`` (B, 2, 3); zeros outside."""
    grid = affine_grid(theta.to(x.dtype), x.shape[2], x.shape[3])  # (B, H, W, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def affine_grid(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``F.affine_grid(theta, (B, C, h, w), align_corners=False)``, by broadcasting.

    On the CPU, ``F.affine_grid`` multiplies a (B, H*W, 3) grid by (B, 3, 2) with a batched
    matmul that costs more than the ``grid_sample`` it feeds; two broadcast planes do not.

    Args:
        theta: (B, 2, 3) matrices mapping output to input coordinates.
        h: output height.
        w: output width.

    Returns:
        (B, h, w, 2) sampling grid of (x, y) in [-1, 1] pixel-edge coordinates.
    """
    dev, dt = theta.device, theta.dtype
    xs = ((torch.arange(w, device=dev, dtype=dt) * 2 + 1) / w - 1).view(1, 1, w)  # pixel centres
    ys = ((torch.arange(h, device=dev, dtype=dt) * 2 + 1) / h - 1).view(1, h, 1)
    t = theta.unsqueeze(-1).unsqueeze(-1)  # (B, 2, 3, 1, 1)
    gx = t[:, 0, 0] * xs + t[:, 0, 1] * ys + t[:, 0, 2]  # (B, h, w)
    gy = t[:, 1, 0] * xs + t[:, 1, 1] * ys + t[:, 1, 2]
    return torch.stack((gx, gy), dim=-1)


def hue_matrix(turns: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) rotations of RGB about the grey axis by ``turns`` (B,) of the colour wheel.

    Rodrigues' formula about n = (1, 1, 1)/sqrt(3), ``cos * I + (1 - cos) * n n^T + sin * [n]x``:
    keeps greys fixed and, at 1/3 turn, maps red to green as an HSV hue shift of 120 degrees
    does. In between it differs slightly from HSV (it rotates chroma in a plane rather than
    along the hexagon), which is immaterial for augmentation and keeps the whole colour change
    one linear map.
    """
    theta = 2.0 * math.pi * turns
    cos = torch.cos(theta)
    coeffs = torch.stack((cos, 1.0 - cos, torch.sin(theta)), dim=1)  # (B, 3)
    basis = _hue_basis(turns.device, turns.dtype)  # (3, 9)
    return (coeffs @ basis).view(-1, 3, 3)  # one small matmul instead of nine stacks


@functools.lru_cache(maxsize=8)
def _hue_basis(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """I, n n^T and [n]x of Rodrigues' formula, flattened to the rows of a (3, 9) matrix."""
    k = 1.0 / math.sqrt(3.0)
    cross = [[0.0, -k, k], [k, 0.0, -k], [-k, k, 0.0]]
    rows = [torch.eye(3), torch.full((3, 3), 1.0 / 3.0), torch.tensor(cross)]
    return torch.stack(rows).view(3, 9).to(device=device, dtype=dtype)


class Augmenter:
    """Per-sample augmentation of image batches, as configured by :class:`AugmentConfig`.

    Each tool is applied to each sample independently with its probability; unchosen samples
    pass through unchanged. Colour changes (brightness, contrast, saturation, hue, channel
    permutation, inversion) are fused into one per-sample affine map of the channels and
    clamped to [0, 1]; noise is added last and not clamped, so its standard deviation is
    exactly ``noise_std``.

    Args:
        cfg: which tools to apply and how strongly.
    """

    def __init__(self, cfg: AugmentConfig) -> None:
        self.cfg = cfg
        self._colour_on = bool(
            cfg.color_p * (cfg.brightness + cfg.contrast + cfg.saturation + cfg.hue)
            or cfg.channel_shuffle_p
            or cfg.invert_p
        )

    def __repr__(self) -> str:
        return f"Augmenter({self.cfg!r})"

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment a batch.

        Args:
            x: (B, C, H, W) floating-point images in [0, 1], on any device.
            generator: source of all randomness, on ``x``'s device; ``None`` uses torch's
                global generator.

        Returns:
            A new tensor of the same shape, device and dtype.

        Raises:
            RuntimeError: ``generator`` lives on another device than ``x``.
        """
        cfg = self.cfg
        u = torch.rand(x.shape[0], _N_DRAWS, generator=generator, device=x.device)  # (B, K)
        out = x.clone()  # every stage below writes into this copy
        subset = x.device.type == "cpu"  # see _where
        if cfg.hflip_p:
            out = _where(out, u[:, _HFLIP] < cfg.hflip_p, lambda v, _: v.flip(-1), subset)
        if cfg.vflip_p:
            out = _where(out, u[:, _VFLIP] < cfg.vflip_p, lambda v, _: v.flip(-2), subset)
        if cfg.affine_p:
            theta = self._theta(u[:, _AFFINE], (x.shape[2], x.shape[3]))  # (B, 2, 3)
            out = _where(
                out, u[:, _AFFINE][:, 0] < cfg.affine_p, lambda v, i: warp(v, theta[i]), subset
            )
        if self._colour_on:
            chosen, matrix, offset = self._colour_map(out, u)
            out = _where(out, chosen, lambda v, i: _channel_map(v, matrix[i], offset[i]), subset)
        if cfg.noise_std:
            noise = torch.randn(out.shape, generator=generator, device=x.device, dtype=x.dtype)
            out.add_(noise, alpha=cfg.noise_std)
        return out

    def _theta(self, u: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Per-sample affine matrices from the uniform draws (B, 6) of the affine columns."""
        cfg = self.cfg
        angle = torch.deg2rad(_sym(u[:, 1], cfg.rotate_deg))
        translate = _sym(u[:, 2:4], cfg.translate)  # (B, 2)
        scale = 1.0 + _sym(u[:, 4], cfg.scale)
        shear = torch.deg2rad(_sym(u[:, 5], cfg.shear_deg))
        return affine_theta(angle, translate, scale, shear, size)

    def _colour_map(
        self, x: torch.Tensor, u: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Which samples change colour (B,), and their channel maps (B, C, C) and offsets (B,)."""
        cfg = self.cfg
        b, c = x.shape[:2]
        d = u[:, _COLOUR]
        chosen = d[:, 0] < cfg.color_p
        bright = torch.where(chosen, 1.0 + _sym(d[:, 1], cfg.brightness), 1.0)
        contrast = torch.where(chosen, 1.0 + _sym(d[:, 2], cfg.contrast), 1.0)
        eye = torch.eye(c, device=x.device).expand(b, c, c)
        if c == 3:
            sat = torch.where(chosen, 1.0 + _sym(d[:, 3], cfg.saturation), 1.0)
            grey = _luma(x.device).expand(3, 3)  # every row: the luma weights
            saturate = sat.view(b, 1, 1) * eye + (1.0 - sat).view(b, 1, 1) * grey
            hue = torch.where(chosen, _sym(d[:, 4], cfg.hue), 0.0)
            # A batch of 3x3 products is faster broadcast than as bmm, which is tuned for big
            # matrices: (B, 3, 3, 1) * (B, 1, 3, 3) summed over the middle index.
            matrix = (hue_matrix(hue).unsqueeze(-1) * saturate.unsqueeze(1)).sum(dim=2)
        else:
            matrix = eye
        # Brightness, then contrast: blend with the mean grey level of the brightened image.
        # Saturation and hue fix greys, so contrast commutes past them into one offset.
        matrix = (bright * contrast).view(b, 1, 1) * matrix
        offset = torch.zeros(b, device=x.device)
        if cfg.contrast:
            means = x.mean(dim=(2, 3)).float()  # (B, C)
            mean_grey = means @ _luma(x.device) if c == 3 else means.mean(dim=1)
            offset = (1.0 - contrast) * bright * mean_grey
        if c == 3 and cfg.channel_shuffle_p:
            shuffled = u[:, _SHUFFLE] < cfg.channel_shuffle_p
            chosen = chosen | shuffled
            perm = u[:, _PERM_KEYS].argsort(dim=1)  # (B, 3), a uniform random permutation
            perm = torch.where(shuffled.view(b, 1), perm, torch.arange(3, device=x.device))
            matrix = matrix.gather(1, perm.view(b, 3, 1).expand(b, 3, 3))  # row i <- row perm[i]
        if cfg.invert_p:
            inverted = u[:, _INVERT] < cfg.invert_p
            chosen = chosen | inverted
            sign = torch.where(inverted, -1.0, 1.0)
            matrix = sign.view(b, 1, 1) * matrix
            offset = sign * offset + (1.0 - sign) / 2.0  # 1 - (M x + o) when inverted
        return chosen, matrix, offset


def _where(
    out: torch.Tensor,
    chosen: torch.Tensor,
    fn: Callable[[torch.Tensor, torch.Tensor | slice], torch.Tensor],
    subset: bool,
) -> torch.Tensor:
    """Replace the chosen samples of ``out`` by ``fn(samples, their indices)``.

    With ``subset`` (the CPU), the transform runs on the chosen samples only and is written
    back in place: that saves (1 - p) of the work, and finding them (nonzero) is cheap. On a
    GPU, finding them would cost a host sync per batch, so the transform runs on the whole
    batch and a select keeps the unchosen samples.
    """
    if subset:
        idx = chosen.nonzero().squeeze(1)
        return out.index_copy_(0, idx, fn(out.index_select(0, idx), idx))
    return torch.where(chosen.view(-1, 1, 1, 1), fn(out, slice(None)), out)


def _channel_map(x: torch.Tensor, matrix: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """``clamp(matrix @ x + offset, 0, 1)`` per sample: x (B, C, H, W), matrix (B, C, C)."""
    b, c, h, w = x.shape
    flat = x.reshape(b, c, h * w)  # (B, C, H*W)
    out = torch.baddbmm(offset.to(x.dtype).view(b, 1, 1), matrix.to(x.dtype), flat)
    return out.clamp_(0.0, 1.0).view(b, c, h, w)
