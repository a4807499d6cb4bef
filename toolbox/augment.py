"""Batched, per-sample data augmentation on the batch's device.

torchvision's v2 transforms, applied to a batch, draw one transform for the whole batch. Here
every sample draws its own flips, affine transform, colour change and noise, fully batched (no
per-sample Python loop) on whatever device the batch lives on, with all randomness taken from a
caller-supplied generator so seeded runs repeat exactly.

Order: flips, affine, colour-scheme change, additive Gaussian noise. A flipped sample that is
also warped is resampled once, with the flip folded into its affine matrix; a flipped sample
that is not warped is flipped exactly, by index.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from toolbox.config import AugmentConfig
from toolbox.noise import NoiseBank

# Columns of the one uniform draw per batch (B, _N_DRAWS). Every tool's column is always drawn,
# whether the tool is on or not, so switching one tool off does not change another's draws.
_HFLIP, _VFLIP = 0, 1
_AFFINE = slice(2, 8)  # mask, angle, tx, ty, scale, shear
_COLOUR = slice(8, 13)  # mask, brightness, contrast, saturation, hue
_SHUFFLE, _PERM_KEYS, _INVERT = 13, slice(14, 17), 17
_N_DRAWS = 18

_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 weights, as torchvision's rgb_to_grayscale
_FLIP_DIMS = {1: (-1,), 2: (-2,), 3: (-2, -1)}  # flip code (h + 2 v) -> dims to reverse


def _draw_ranges(cfg: AugmentConfig) -> torch.Tensor:
    """(2, _N_DRAWS): low end and width of each uniform draw's range (angles in radians).

    Masks and permutation keys stay uniform on [0, 1); one multiply-add maps a batch's draws.
    """
    rot, shear = math.radians(cfg.rotate_deg), math.radians(cfg.shear_deg)
    t, s, hue = cfg.translate, cfg.scale, cfg.hue
    b, c, sat = cfg.brightness, cfg.contrast, cfg.saturation
    ranges = [(0.0, 1.0)] * _N_DRAWS
    ranges[_AFFINE] = [(0.0, 1.0), (-rot, rot), (-t, t), (-t, t), (1 - s, 1 + s), (-shear, shear)]
    ranges[_COLOUR] = [(0.0, 1.0), (1 - b, 1 + b), (1 - c, 1 + c), (1 - sat, 1 + sat), (-hue, hue)]
    low, high = torch.tensor(ranges).T
    return torch.stack((low, high - low))


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
    # inverse of s * R @ Sh = (1/s) * Sh^-1 @ R^-1, conjugated by diag(W/2, H/2)
    lin = torch.stack((cos - k * sin, (-sin - k * cos) * (h / w), sin * (w / h), cos), dim=1)
    lin = (lin / scale.unsqueeze(1)).view(-1, 2, 2)
    shift = lin @ (-2.0 * translate).unsqueeze(-1)  # (B, 2, 1); 2 * translate is normalized
    return torch.cat((lin, shift), dim=2)  # (B, 2, 3)


def warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample ``x`` (B, C, H, W) with per-sample ``theta`` (B, 2, 3); zeros outside."""
    grid = affine_grid(theta.to(x.dtype), x.shape[2], x.shape[3])  # (B, H, W, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def affine_grid(theta: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """``F.affine_grid(theta, (B, C, h, w), align_corners=False)``, with the base grid cached.

    The (h*w, 3) grid of homogeneous pixel centres is made once per shape, so a batch costs one
    matrix product, (2B, 3) @ (3, h*w), and a transpose: building the grid anew per batch, as
    ``F.affine_grid`` does, costs about as much as the ``grid_sample`` it feeds, and a batched
    (B, h*w, 3) @ (B, 3, 2) product is B tiny products, several times slower than one.

    Args:
        theta: (B, 2, 3) matrices mapping output to input coordinates.
        h: output height.
        w: output width.

    Returns:
        (B, h, w, 2) sampling grid of (x, y) in [-1, 1] pixel-edge coordinates.
    """
    b = theta.shape[0]
    base = _base_grid(h, w, theta.device, theta.dtype)  # (3, h*w)
    grid = theta.reshape(2 * b, 3) @ base  # (2B, h*w): rows x0, y0, x1, y1, ...
    return grid.view(b, 2, h * w).transpose(1, 2).reshape(b, h, w, 2)


@functools.lru_cache(maxsize=8)
def _base_grid(h: int, w: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(3, h*w) columns (x, y, 1) of the normalized pixel centres, x varying fastest."""
    xs = (torch.arange(w, device=device, dtype=dtype) * 2 + 1) / w - 1
    ys = (torch.arange(h, device=device, dtype=dtype) * 2 + 1) / h - 1
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # (h, w) each
    return torch.stack((grid_x, grid_y, torch.ones_like(grid_x))).view(3, h * w)


def hue_matrix(turns: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) rotations of RGB about the grey axis by ``turns`` (B,) of the colour wheel.

    Rodrigues' formula about n = (1, 1, 1)/sqrt(3), ``cos * I + (1 - cos) * n n^T + sin * [n]x``:
    keeps greys fixed and, at 1/3 turn, maps red to green as an HSV hue shift of 120 degrees
    does. In between it differs slightly from HSV (it rotates chroma in a plane rather than
    along the hexagon), which is immaterial for augmentation and keeps the whole colour change
    one linear map.
    """
    return colour_matrix(turns, torch.ones_like(turns))


def colour_matrix(turns: torch.Tensor, saturation: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) ``hue_matrix(turns) @ S``, S blending RGB with its grey by ``saturation`` (B,).

    ``S = sat * I + (1 - sat) * G``, G having the luma weights in every row: 0 makes the
    image grey, 1 leaves it alone, above 1 exaggerates colour (torchvision's saturation).
    """
    theta = 2.0 * math.pi * turns
    hue = torch.stack((torch.ones_like(theta), torch.cos(theta), torch.sin(theta)), dim=1)
    sat = torch.stack((torch.ones_like(saturation), saturation), dim=1)
    coeffs = (hue.unsqueeze(2) * sat.unsqueeze(1)).flatten(1)  # (B, 6)
    return (coeffs @ _colour_basis(turns.device, turns.dtype)).view(-1, 3, 3)


@functools.lru_cache(maxsize=8)
def _colour_basis(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(6, 9): ``hue @ saturation`` is ``(1, cos, sin) x (1, sat)`` times these flat matrices.

    The hue rotation is ``N + cos (I - N) + sin K`` (Rodrigues, with N = n n^T and K = [n]x)
    and saturation ``G + sat (I - G)`` (G: every row the luma weights), so their product is
    bilinear in (1, cos, sin) and (1, sat): one (B, 6) @ (6, 9) product instead of two batches
    of 3x3 matrices.
    """
    k = 1.0 / math.sqrt(3.0)
    eye, n = torch.eye(3, dtype=torch.float64), torch.full((3, 3), 1.0 / 3.0, dtype=torch.float64)
    cross = torch.tensor([[0.0, -k, k], [k, 0.0, -k], [-k, k, 0.0]], dtype=torch.float64)
    grey = torch.tensor(_LUMA, dtype=torch.float64).expand(3, 3)
    hue_basis, sat_basis = (n, eye - n, cross), (grey, eye - grey)
    rows = [hb @ sb for hb in hue_basis for sb in sat_basis]
    return torch.stack(rows).view(6, 9).to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=8)
def _luma(device: torch.device) -> torch.Tensor:
    """(3,) luma weights on ``device``, made once: a fresh host tensor would be a copy per batch."""
    return torch.tensor(_LUMA, device=device)


@functools.lru_cache(maxsize=8)
def _neutral_colour(device: torch.device) -> torch.Tensor:
    """(4,) brightness, contrast, saturation and hue that leave a sample's colours alone."""
    return torch.tensor((1.0, 1.0, 1.0, 0.0), device=device)


class Augmenter:
    """Per-sample augmentation of image batches, as configured by :class:`AugmentConfig`.

    Each tool is applied to each sample independently with its probability; unchosen samples
    pass through unchanged. Flips are exact (by index) unless the sample is also warped, in
    which case the flip is folded into its one affine resampling. Colour changes (brightness,
    contrast, saturation, hue, channel permutation, inversion) are fused into one per-sample
    affine map of the channels and clamped to [0, 1]; noise is added last and not clamped, so
    its standard deviation is exactly ``noise_std``. On the CPU the noise is mixed from a bank
    of normal numbers drawn once (:class:`toolbox.noise.NoiseBank`); on a GPU it is drawn fresh.

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
        self._ranges = {torch.device("cpu"): _draw_ranges(cfg)}  # device -> (2, _N_DRAWS)
        self._noise = NoiseBank() if cfg.noise_std else None

    def __repr__(self) -> str:
        return f"Augmenter({self.cfg!r})"

    def __call__(
        self, x: torch.Tensor, generator: torch.Generator | None = None, *, inplace: bool = False
    ) -> torch.Tensor:
        """Augment a batch.

        Args:
            x: (B, C, H, W) floating-point images in [0, 1], on any device.
            generator: source of all randomness, on ``x``'s device; ``None`` uses torch's
                global generator.
            inplace: let the flips and the warp write into ``x`` (whose contents are then
                undefined) instead of into a copy: for a batch the caller made for the purpose.
                A non-contiguous ``x`` is copied all the same.

        Returns:
            A tensor of the same shape, device and dtype; unless ``inplace``, a new one and
            ``x`` is not modified.

        Raises:
            RuntimeError: ``generator`` lives on another device than ``x``.
        """
        u = torch.rand(x.shape[0], _N_DRAWS, generator=generator, device=x.device)  # (B, K)
        p = self._params(u)  # (B, K): masks still uniform, strengths in their ranges
        subset = x.device.type == "cpu"  # see _where
        if not (inplace and x.is_contiguous()):  # the noise views the batch as (B, 1, C*H*W)
            x = x.clone(memory_format=torch.contiguous_format)
        out = self._geometry(x, p, subset)  # (B, C, H, W)
        if self._colour_on:
            out = _channel_map(out, *self._colour_map(out, p))
        if self._noise is not None:
            self._add_noise(out, generator)
        return out

    def _add_noise(self, out: torch.Tensor, generator: torch.Generator | None) -> None:
        """Add the Gaussian noise in place: from the bank on the CPU, fresh on other devices."""
        assert self._noise is not None
        if out.device.type == "cpu":
            self._noise.add_to(out, self.cfg.noise_std, generator)
            return
        noise = torch.randn(out.shape, generator=generator, device=out.device, dtype=out.dtype)
        out.add_(noise, alpha=self.cfg.noise_std)

    def _params(self, u: torch.Tensor) -> torch.Tensor:
        """Map the uniform draws (B, K) to each column's range, in one multiply-add."""
        ranges = self._ranges.get(u.device)
        if ranges is None:
            ranges = self._ranges[u.device] = self._ranges[torch.device("cpu")].to(u.device)
        low, span = ranges
        return torch.addcmul(low, u, span)  # masks: 0 + u * 1, exactly u

    def _geometry(self, x: torch.Tensor, p: torch.Tensor, subset: bool) -> torch.Tensor:
        """Flip and warp the samples of ``x`` (B, C, H, W), in place on the CPU."""
        cfg = self.cfg
        hflip, vflip = p[:, _HFLIP] < cfg.hflip_p, p[:, _VFLIP] < cfg.vflip_p  # (B,)
        if not cfg.affine_p:
            return _flip(x, hflip, vflip, subset) if cfg.hflip_p or cfg.vflip_p else x
        a = p[:, _AFFINE]
        warped = a[:, 0] < cfg.affine_p
        theta = affine_theta(a[:, 1], a[:, 2:4], a[:, 4], a[:, 5], (x.shape[2], x.shape[3]))
        if cfg.hflip_p or cfg.vflip_p:
            # Sampling a flipped image at (x, y) reads the original at (-x, y) (or (x, -y)) in
            # normalized coordinates, so a flip followed by the warp is the warp with theta's
            # x (or y) row negated: one resampling instead of a flip pass and a warp.
            flips = torch.stack((hflip, vflip), dim=1).to(theta.dtype)  # (B, 2)
            theta = theta * (1.0 - 2.0 * flips).unsqueeze(2)
            x = _flip(x, hflip & ~warped, vflip & ~warped, subset)
        return _where(x, warped, lambda v, i: warp(v, theta[i]), subset)

    def _colour_map(self, x: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample channel maps (B, C, C) and offsets (B,): exactly I and 0 where unchosen.

        The map then runs on the whole batch: on the CPU, gathering the chosen samples and
        scattering them back costs more than the tiny matmul on the others, and it needs no
        host sync on a GPU. Left-alone samples are in [0, 1], so the clamp does not move them.
        """
        cfg = self.cfg
        b, c = x.shape[:2]
        chosen = p[:, _COLOUR][:, 0] < cfg.color_p
        # Samples only shuffled or inverted keep neutral factors.
        factors = torch.where(chosen.view(b, 1), p[:, _COLOUR][:, 1:], _neutral_colour(x.device))
        bright, contrast, sat, hue = factors.unbind(1)  # (B,) each
        # Brightness, then contrast: blend with the mean grey level of the brightened image.
        # Saturation and hue fix greys, so contrast commutes past them into one offset.
        eye = torch.eye(c, device=x.device)
        gain = (bright * contrast).view(b, 1, 1)
        matrix = gain * (colour_matrix(hue, sat) if c == 3 else eye)
        offset = torch.zeros(b, device=x.device)
        if cfg.contrast:
            means = x.mean(dim=(2, 3)).float()  # (B, C)
            mean_grey = means @ _luma(x.device) if c == 3 else means.mean(dim=1)
            offset = (1.0 - contrast) * bright * mean_grey  # exactly 0 where contrast is 1
        if c == 3 and cfg.channel_shuffle_p:
            shuffled = p[:, _SHUFFLE] < cfg.channel_shuffle_p
            chosen = chosen | shuffled
            perm = p[:, _PERM_KEYS].argsort(dim=1)  # (B, 3), a uniform random permutation
            perm = torch.where(shuffled.view(b, 1), perm, torch.arange(3, device=x.device))
            matrix = matrix.gather(1, perm.view(b, 3, 1).expand(b, 3, 3))  # row i <- row perm[i]
        if cfg.invert_p:
            inverted = p[:, _INVERT] < cfg.invert_p
            chosen = chosen | inverted
            sign = torch.where(inverted, -1.0, 1.0)
            matrix = sign.view(b, 1, 1) * matrix
            offset = sign * offset + (1.0 - sign) / 2.0  # 1 - (M x + o) when inverted
        # The neutral colour matrix is I only up to rounding: make it exact.
        return torch.where(chosen.view(b, 1, 1), matrix, eye), offset


def _flip(x: torch.Tensor, hflip: torch.Tensor, vflip: torch.Tensor, subset: bool) -> torch.Tensor:
    """Flip the samples of ``x`` (B, C, H, W) chosen by ``hflip`` (B,) left/right and those
    chosen by ``vflip`` (B,) upside down: exact copies of their pixels.

    With ``subset`` (the CPU), each of the three flip combinations is one gather of its samples,
    flipped and written back into ``x``; otherwise a select per direction (see :func:`_where`)
    makes a new tensor.
    """
    if not subset:
        x = torch.where(hflip.view(-1, 1, 1, 1), x.flip(-1), x)
        return torch.where(vflip.view(-1, 1, 1, 1), x.flip(-2), x)
    code = hflip.long() + 2 * vflip.long()  # (B,) 0: none, 1: h, 2: v, 3: both
    for value, dims in _FLIP_DIMS.items():
        idx = (code == value).nonzero().squeeze(1)
        if len(idx):
            x.index_copy_(0, idx, x.index_select(0, idx).flip(dims))
    return x


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
    batch and a select keeps the unchosen samples (on the CPU, that select alone costs more
    than the gather and scatter of the subset).
    """
    if subset:
        idx = chosen.nonzero().squeeze(1)
        if not len(idx):
            return out
        return out.index_copy_(0, idx, fn(out.index_select(0, idx), idx))
    return torch.where(chosen.view(-1, 1, 1, 1), fn(out, slice(None)), out)


def _channel_map(x: torch.Tensor, matrix: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """``clamp(matrix @ x + offset, 0, 1)`` per sample: x (B, C, H, W), matrix (B, C, C)."""
    b, c, h, w = x.shape
    flat = x.reshape(b, c, h * w)  # (B, C, H*W)
    out = torch.baddbmm(offset.to(x.dtype).view(b, 1, 1), matrix.to(x.dtype), flat)
    return out.clamp_(0.0, 1.0).view(b, c, h, w)
