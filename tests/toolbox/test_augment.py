"""Per-sample augmentation: each tool's semantics, per-sample draws, rates and seeding."""

from __future__ import annotations

import math

import pytest
import torch

from toolbox.augment import (
    Augmenter,
    _flip,
    _where,
    affine_grid,
    affine_theta,
    colour_matrix,
    hue_matrix,
    warp,
)
from toolbox.config import AugmentConfig

ALL_ON = AugmentConfig(
    hflip_p=0.5,
    vflip_p=0.5,
    affine_p=0.5,
    rotate_deg=20,
    translate=0.1,
    scale=0.1,
    shear_deg=10,
    color_p=0.5,
    brightness=0.3,
    contrast=0.3,
    saturation=0.3,
    hue=0.1,
    channel_shuffle_p=0.3,
    invert_p=0.2,
    noise_std=0.05,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(b: int, c: int = 3, size: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, c, size, size, generator=_gen(seed))  # (B, C, H, W)


def _blob(b: int, cy: float, cx: float, size: int = 32) -> torch.Tensor:
    """A smooth bright spot at (cy, cx) pixels, repeated b times: (B, 1, size, size)."""
    ys, xs = torch.meshgrid(torch.arange(float(size)), torch.arange(float(size)), indexing="ij")
    spot = torch.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * 1.5**2))
    return spot.expand(b, 1, size, size).clone()


def _centroid(x: torch.Tensor) -> torch.Tensor:
    """(B, 2) intensity centroid (y, x) in pixels of (B, 1, H, W) images."""
    h, w = x.shape[-2:]
    mass = x.sum(dim=(1, 2, 3))
    ys = (x.sum(dim=(1, 3)) * torch.arange(float(h))).sum(1) / mass
    xs = (x.sum(dim=(1, 2)) * torch.arange(float(w))).sum(1) / mass
    return torch.stack((ys, xs), dim=1)


@pytest.mark.parametrize("channels", [1, 3])
def test_flips_with_p1_equal_tensor_flips(channels: int) -> None:
    x = _images(8, channels)
    assert torch.equal(Augmenter(AugmentConfig(hflip_p=1.0))(x, _gen()), x.flip(-1))
    assert torch.equal(Augmenter(AugmentConfig(vflip_p=1.0))(x, _gen()), x.flip(-2))
    both = AugmentConfig(hflip_p=1.0, vflip_p=1.0)
    assert torch.equal(Augmenter(both)(x, _gen()), x.flip(-1, -2))


FLIPS = [
    ({"hflip_p": 1.0}, (-1,)),
    ({"vflip_p": 1.0}, (-2,)),
    ({"hflip_p": 1.0, "vflip_p": 1.0}, (-2, -1)),
]


@pytest.mark.parametrize(("cfg", "dims"), FLIPS)
def test_a_flip_folded_into_an_identity_warp_still_flips(
    cfg: dict[str, float], dims: tuple[int, ...]
) -> None:
    # Every sample is warped, by the identity (all strengths 0): the flip lives in theta alone.
    x = _images(8, size=12)
    out = Augmenter(AugmentConfig(affine_p=1.0, **cfg))(x, _gen())
    assert torch.allclose(out, x.flip(dims), atol=1e-5)


def test_unwarped_samples_flip_exactly_when_affine_is_on() -> None:
    x = _images(400, 1, 8)
    cfg = AugmentConfig(hflip_p=1.0, vflip_p=1.0, affine_p=0.5, rotate_deg=45, scale=0.2)
    out = Augmenter(cfg)(x, _gen())
    exact = (out == x.flip(-1, -2)).flatten(1).all(1)
    assert abs(exact.float().mean().item() - 0.5) < 0.1  # the unwarped half, bit for bit


def test_flip_then_warp_equals_warp_with_the_flip_folded_into_theta() -> None:
    x = _images(6, size=10)
    g = _gen(3)
    theta = affine_theta(
        torch.rand(6, generator=g), torch.rand(6, 2, generator=g) * 0.2 - 0.1,
        1.0 + torch.rand(6, generator=g) * 0.2, torch.rand(6, generator=g) * 0.3, (10, 10),
    )  # fmt: skip
    sign = torch.tensor([[-1.0], [1.0]])  # x row negated: a left/right flip first
    assert torch.allclose(warp(x.flip(-1), theta), warp(x, theta * sign), atol=1e-5)


def test_gpu_select_flips_match_cpu_subset_flips() -> None:
    x = _images(32, size=6)
    hflip, vflip = torch.rand(32, generator=_gen(1)) < 0.5, torch.rand(32, generator=_gen(2)) < 0.5
    assert torch.equal(_flip(x.clone(), hflip, vflip, True), _flip(x, hflip, vflip, False))


def test_inplace_gives_the_same_batch() -> None:
    x = _images(32)
    aug = Augmenter(ALL_ON)
    expected = aug(x, _gen(4))
    assert torch.equal(aug(x.clone(), _gen(4), inplace=True), expected)


def test_a_non_contiguous_batch_gives_the_same_batch() -> None:
    x = _images(16)
    aug = Augmenter(ALL_ON)
    expected = aug(x, _gen(7))
    channels_last = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(aug(channels_last, _gen(7)), expected)
    assert torch.equal(aug(channels_last, _gen(7), inplace=True), expected)


def test_zero_probabilities_are_the_identity_and_return_a_new_tensor() -> None:
    # Strengths set, but every probability (and the noise) is zero.
    cfg = AugmentConfig(rotate_deg=90, translate=0.3, brightness=0.9, hue=0.4, scale=0.5)
    x = _images(16)
    out = Augmenter(cfg)(x, _gen())
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()


def test_half_probability_flips_about_half_the_samples_independently() -> None:
    x = _images(2000, 1, 8)
    out = Augmenter(AugmentConfig(hflip_p=0.5))(x, _gen(1))
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert bool((flipped ^ kept).all())  # each sample either flipped or untouched
    assert abs(flipped.float().mean().item() - 0.5) < 0.05  # 5 sigma is about 0.056


def test_every_sample_draws_its_own_affine_transform() -> None:
    x = _images(1).expand(64, -1, -1, -1).contiguous()  # one image, 64 times
    cfg = AugmentConfig(affine_p=1.0, rotate_deg=30, translate=0.1, scale=0.2, shear_deg=10)
    out = Augmenter(cfg)(x, _gen()).flatten(1)
    distances = torch.cdist(out, out) + torch.eye(64) * 1e9
    assert distances.min() > 1e-3  # no two samples got the same transform


def test_only_chosen_samples_change() -> None:
    x = _images(400)
    out = Augmenter(AugmentConfig(affine_p=0.3, rotate_deg=45))(x, _gen())
    untouched = (out == x).flatten(1).all(1).float().mean().item()
    assert abs(untouched - 0.7) < 0.1


def test_theta_rotates_counter_clockwise_and_translates_right_and_down() -> None:
    x = _images(2, 3, 8)
    zero, one = torch.zeros(2), torch.ones(2)

    def theta(angle_deg: float, tx: float = 0.0, ty: float = 0.0) -> torch.Tensor:
        angle = torch.full((2,), math.radians(angle_deg))
        return affine_theta(angle, torch.tensor([[tx, ty]] * 2), one, zero, (8, 8))

    assert torch.allclose(warp(x, theta(90)), torch.rot90(x, 1, (-2, -1)), atol=1e-5)
    assert torch.allclose(warp(x, theta(180)), x.flip(-1, -2), atol=1e-5)
    shifted = warp(x, theta(0, tx=0.25, ty=-0.125))  # 2 px right, 1 px up
    assert torch.allclose(shifted[..., :-1, 2:], x[..., 1:, :-2], atol=1e-5)
    assert torch.equal(shifted[..., :2], torch.zeros_like(shifted[..., :2]))  # zeros flow in


def test_affine_grid_matches_torch() -> None:
    theta = torch.randn(4, 2, 3, generator=_gen())
    for h, w in [(8, 8), (5, 12)]:
        expected = torch.nn.functional.affine_grid(theta, [4, 1, h, w], align_corners=False)
        assert torch.allclose(affine_grid(theta, h, w), expected, atol=1e-5)


def test_sampled_rotation_keeps_distance_to_centre() -> None:
    # A spot 8 px right of the centre of a 32x32 image (centre at 15.5, 15.5).
    x = _blob(256, 15.5, 23.5)
    out = Augmenter(AugmentConfig(affine_p=1.0, rotate_deg=180))(x, _gen())
    offset = _centroid(out) - 15.5  # (B, 2)
    assert torch.allclose(offset.norm(dim=1), torch.full((256,), 8.0), atol=0.1)
    angles = torch.atan2(-offset[:, 0], offset[:, 1])  # y points down
    assert angles.std() > 1.5  # uniform on [-pi, pi] has std 1.81


def test_sampled_translation_shifts_content_within_range() -> None:
    x = _blob(512, 15.5, 15.5)
    out = Augmenter(AugmentConfig(affine_p=1.0, translate=0.25))(x, _gen())
    shift = _centroid(out) - 15.5  # (B, 2)
    assert shift.abs().max() <= 0.25 * 32 + 1e-3
    assert torch.allclose(out.sum(dim=(1, 2, 3)), x.sum(dim=(1, 2, 3)), rtol=1e-3)  # moved whole
    assert (shift.std(dim=0) - 8 / math.sqrt(3)).abs().max() < 0.5  # uniform on [-8, 8]


@pytest.mark.parametrize("channels", [1, 3])
def test_noise_has_the_requested_std_and_is_not_clamped(channels: int) -> None:
    x = torch.full((256, channels, 32, 32), 0.5)
    noise = Augmenter(AugmentConfig(noise_std=0.2))(x, _gen()) - x
    assert abs(noise.std().item() - 0.2) < 0.002 and abs(noise.mean().item()) < 0.002
    assert (x + noise).min() < 0.0


def test_brightness_scales_each_sample_by_its_own_factor() -> None:
    x = _images(64, 1) * 0.5  # in [0, 0.5], so factors up to 1.5 never clip
    out = Augmenter(AugmentConfig(color_p=1.0, brightness=0.5))(x, _gen())
    factor = out.flatten(1) / x.flatten(1)  # (B, pixels)
    per_sample = factor.mean(1)
    assert torch.allclose(factor, per_sample[:, None], atol=1e-4)  # one factor per image
    assert per_sample.min() >= 0.5 and per_sample.max() <= 1.5 and per_sample.std() > 0.1


def test_colour_changes_keep_range_and_differ_per_sample() -> None:
    x = _images(1).expand(64, -1, -1, -1).contiguous()
    cfg = AugmentConfig(color_p=1.0, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.2)
    out = Augmenter(cfg)(x, _gen())
    assert out.shape == x.shape and out.min() >= 0.0 and out.max() <= 1.0
    assert out.mean(dim=(2, 3)).std(dim=0).min() > 0.01  # every channel's mean varies


def test_saturation_and_hue_leave_greys_alone() -> None:
    grey = _images(32, 1).expand(-1, 3, -1, -1).contiguous()
    out = Augmenter(AugmentConfig(color_p=1.0, saturation=0.9, hue=0.5))(grey, _gen())
    assert torch.allclose(out, grey, atol=1e-5)


def test_samples_without_a_colour_change_are_left_exactly_alone() -> None:
    x = _images(400)
    cfg = AugmentConfig(color_p=0.3, brightness=0.5, saturation=0.5, hue=0.2, invert_p=0.2)
    out = Augmenter(cfg)(x, _gen())
    untouched = (out == x).flatten(1).all(1).float().mean().item()
    assert abs(untouched - 0.7 * 0.8) < 0.1


def test_colour_matrix_is_hue_rotation_after_saturation() -> None:
    turns, sat = torch.tensor([0.1, -0.3]), torch.tensor([0.5, 1.7])
    grey = torch.tensor([0.299, 0.587, 0.114]).expand(3, 3)
    saturate = sat.view(2, 1, 1) * torch.eye(3) + (1 - sat).view(2, 1, 1) * grey
    assert torch.allclose(colour_matrix(turns, sat), hue_matrix(turns) @ saturate, atol=1e-6)


def test_hue_third_turn_maps_red_to_green() -> None:
    red = torch.tensor([1.0, 0.0, 0.0])
    green = hue_matrix(torch.tensor([1 / 3]))[0] @ red
    assert torch.allclose(green, torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)


def test_channel_shuffle_permutes_channels_per_sample() -> None:
    x = _images(200)
    out = Augmenter(AugmentConfig(channel_shuffle_p=1.0))(x, _gen())
    sums_in, sums_out = x.sum(dim=(2, 3)), out.sum(dim=(2, 3))  # (B, 3)
    assert torch.allclose(sums_in.sort(1).values, sums_out.sort(1).values, atol=1e-3)
    perms = {tuple(torch.cdist(o[:, None], i[:, None]).argmin(1).tolist()) for o, i in
             zip(sums_out, sums_in, strict=True)}  # fmt: skip
    assert len(perms) == 6  # all permutations of 3 channels occur


@pytest.mark.parametrize("channels", [1, 3])
def test_invert_with_p1_flips_intensities(channels: int) -> None:
    x = _images(8, channels)
    out = Augmenter(AugmentConfig(invert_p=1.0))(x, _gen())
    assert torch.allclose(out, 1.0 - x, atol=1e-6)


@pytest.mark.parametrize("channels", [1, 3])
def test_seeded_runs_repeat_exactly_and_seeds_differ(channels: int) -> None:
    x = _images(32, channels)
    aug = Augmenter(ALL_ON)
    assert torch.equal(aug(x, _gen(5)), aug(x, _gen(5)))
    assert not torch.equal(aug(x, _gen(5)), aug(x, _gen(6)))


@pytest.mark.parametrize("channels", [1, 3])
def test_all_tools_keep_shape_dtype_and_input(channels: int) -> None:
    x = _images(32, channels, size=12)
    before = x.clone()
    out = Augmenter(ALL_ON)(x, _gen())
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert torch.equal(x, before)  # the caller's batch is not modified


def test_gpu_select_path_matches_cpu_subset_path() -> None:
    # The GPU path (transform everything, then select) cannot run here; on CPU tensors it
    # must give exactly what the CPU path (transform the chosen subset) gives.
    x = _images(16)
    chosen = torch.rand(16, generator=_gen()) < 0.5
    theta = affine_theta(
        torch.rand(16), torch.zeros(16, 2), torch.ones(16), torch.zeros(16), (16, 16)
    )
    outs = [
        _where(x.clone(), chosen, lambda v, i: warp(v, theta[i]), subset)
        for subset in (True, False)
    ]
    assert torch.allclose(outs[0], outs[1], atol=1e-6)
    assert torch.equal(outs[1][~chosen], x[~chosen])


def test_shuffle_or_invert_alone_counts_as_augmentation() -> None:
    assert AugmentConfig(channel_shuffle_p=0.1).enabled and AugmentConfig(invert_p=0.1).enabled
    assert not AugmentConfig(rotate_deg=30).enabled
