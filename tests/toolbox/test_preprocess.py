"""Input normalization modes."""

import pytest
import torch

from toolbox.errors import ConfigError
from toolbox.preprocess import InputNormalizer


def _images() -> torch.Tensor:
    torch.manual_seed(0)
    x = torch.rand(50, 3, 6, 6)  # (N, C, H, W) in [0, 1]
    return x * torch.tensor([1.0, 0.5, 0.2]).view(1, 3, 1, 1)  # channels with other stats


@pytest.mark.parametrize("mode", ["none", "unit"])
def test_none_and_unit_leave_unit_range_data_alone(mode: str) -> None:
    x = _images()
    assert torch.equal(InputNormalizer.fit(mode, x)(x), x)  # type: ignore[arg-type]


def test_symmetric_maps_unit_range_to_minus_one_one() -> None:
    y = InputNormalizer.fit("symmetric", torch.zeros(1, 1, 1, 1))(torch.tensor([0.0, 0.5, 1.0]))
    assert torch.equal(y, torch.tensor([-1.0, 0.0, 1.0]))


def test_standardize_uses_training_statistics_per_channel() -> None:
    x = _images()
    norm = InputNormalizer.fit("standardize", x)
    y = norm(x)
    assert torch.allclose(y.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(y.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)
    # Other data (validation) is shifted by the training statistics, not its own.
    other = torch.full((2, 3, 6, 6), 0.5)
    expected = (0.5 - x.mean(dim=(0, 2, 3))) / x.std(dim=(0, 2, 3), unbiased=False)
    assert torch.allclose(norm(other)[0, :, 0, 0], expected, atol=1e-5)


def test_per_instance_standardizes_each_sample() -> None:
    x = _images()
    y = InputNormalizer.fit("per_instance", x)(x)
    assert torch.allclose(y.mean(dim=(1, 2, 3)), torch.zeros(50), atol=1e-5)
    assert torch.allclose(y.std(dim=(1, 2, 3), unbiased=False), torch.ones(50), atol=1e-4)


def test_constant_images_do_not_divide_by_zero() -> None:
    x = torch.zeros(4, 1, 3, 3)
    for mode in ("standardize", "per_instance"):
        assert torch.isfinite(InputNormalizer.fit(mode, x)(x)).all()  # type: ignore[arg-type]


def test_state_dict_round_trips() -> None:
    norm = InputNormalizer.fit("standardize", _images())
    again = InputNormalizer.from_state_dict(norm.state_dict())
    x = _images()
    assert torch.equal(again(x), norm(x))


def test_unknown_mode_is_rejected() -> None:
    with pytest.raises(ConfigError, match="input_norm"):
        InputNormalizer.fit("zca", _images())  # type: ignore[arg-type]
