"""Hidden normalization: which axes each kind normalizes over, and train/eval behaviour."""

import pytest
import torch

from toolbox.errors import ConfigError
from toolbox.norm import NORM_LAYERS, get_norm_layer


def _input() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(6, 8, 5, 5) * 3.0 + 2.0  # (B, C, H, W), far from zero mean / unit var


def _assert_standardized(y: torch.Tensor, dims: tuple[int, ...]) -> None:
    mean = y.mean(dim=dims)
    var = y.var(dim=dims, unbiased=False)
    assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-5)
    assert torch.allclose(var, torch.ones_like(var), atol=1e-3)


@pytest.mark.parametrize("name", sorted(NORM_LAYERS))
def test_every_norm_keeps_the_shape_and_has_learned_affine(name: str) -> None:
    layer = get_norm_layer(name, 8, spatial=True, groups=4)
    assert layer(_input()).shape == (6, 8, 5, 5)
    n_affine = sum(p.numel() for p in layer.parameters())
    assert n_affine == (0 if name == "none" else 16)  # gamma and beta per channel


def test_batch_norm_normalizes_over_batch_and_space_per_channel() -> None:
    layer = get_norm_layer("batch", 8, spatial=True).train()
    _assert_standardized(layer(_input()), dims=(0, 2, 3))


def test_batch_norm_uses_running_statistics_in_eval() -> None:
    layer = get_norm_layer("batch", 8, spatial=True)
    assert isinstance(layer, torch.nn.BatchNorm2d)
    assert layer.running_mean is not None and layer.running_var is not None
    x = _input()
    layer.train()
    for _ in range(200):  # momentum 0.1: running stats converge to the batch's
        layer(x)
    layer.eval()
    y = layer(x[:1])  # a single sample: batch statistics would make it all zeros per channel
    expected = (x[:1] - layer.running_mean.view(1, -1, 1, 1)) / torch.sqrt(
        layer.running_var.view(1, -1, 1, 1) + layer.eps
    )
    assert torch.allclose(y, expected, atol=1e-5)
    assert y.abs().sum() > 0


def test_layer_norm_normalizes_each_sample_over_channels_and_space() -> None:
    _assert_standardized(get_norm_layer("layer", 8, spatial=True)(_input()), dims=(1, 2, 3))


def test_instance_norm_normalizes_each_sample_and_channel_over_space() -> None:
    _assert_standardized(get_norm_layer("instance", 8, spatial=True)(_input()), dims=(2, 3))


def test_instance_norm_is_the_same_in_train_and_eval() -> None:
    layer = get_norm_layer("instance", 8, spatial=True)
    x = _input()
    assert torch.equal(layer.train()(x), layer.eval()(x))


def test_group_norm_normalizes_each_group_of_channels() -> None:
    y = get_norm_layer("group", 8, spatial=True, groups=4)(_input())
    grouped = y.view(6, 4, 2, 5, 5)  # (B, groups, C/groups, H, W)
    _assert_standardized(grouped, dims=(2, 3, 4))
    # Not layer norm: each group on its own, so a whole sample is standardized only in total.
    assert not torch.allclose(y.view(6, 8, -1).mean(dim=2), torch.zeros(6, 8), atol=1e-3)


def test_fully_connected_norms_normalize_the_right_axis() -> None:
    torch.manual_seed(0)
    x = torch.randn(32, 8) * 3.0 + 2.0  # (B, F)
    _assert_standardized(get_norm_layer("batch", 8, spatial=False).train()(x), dims=(0,))
    _assert_standardized(get_norm_layer("layer", 8, spatial=False)(x), dims=(1,))
    y = get_norm_layer("group", 8, spatial=False, groups=2)(x)
    _assert_standardized(y.view(32, 2, 4), dims=(2,))


def test_instance_norm_on_fully_connected_features_is_rejected() -> None:
    with pytest.raises(ConfigError, match="spatial"):
        get_norm_layer("instance", 8, spatial=False)


def test_group_count_must_divide_features() -> None:
    with pytest.raises(ConfigError, match="groups=3"):
        get_norm_layer("group", 8, spatial=True, groups=3)


def test_unknown_norm_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="batch"):
        get_norm_layer("weight", 8, spatial=True)
