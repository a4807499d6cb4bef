"""Model construction: shapes on digits and CIFAR sizes, layer placement, train/eval."""

import pytest
import torch
from torch import nn

from toolbox.config import ModelConfig
from toolbox.dropout import DropConnectLinear, Dropout
from toolbox.models import build_model

SHAPES = [(1, 8, 8), (3, 32, 32), (1, 28, 28)]


@pytest.mark.parametrize("in_shape", SHAPES)
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
@pytest.mark.parametrize("norm", ["none", "batch", "layer", "group"])
def test_models_map_images_to_logits(arch: str, norm: str, in_shape: tuple[int, int, int]) -> None:
    cfg = ModelConfig(arch=arch, width=16, depth=3, norm=norm, groups=4, fc_width=24)  # type: ignore[arg-type]
    model = build_model(cfg, in_shape, 10)
    assert model(torch.rand(5, *in_shape)).shape == (5, 10)


@pytest.mark.parametrize("depth", [1, 4, 6])
def test_cnn_with_instance_norm_works_at_any_depth_on_digits(depth: int) -> None:
    cfg = ModelConfig(arch="cnn", width=4, depth=depth, norm="instance")
    model = build_model(cfg, (1, 8, 8), 10)
    assert model(torch.rand(3, 1, 8, 8)).shape == (3, 10)


def test_cnn_pools_until_the_map_is_two_by_two() -> None:
    model = build_model(ModelConfig(arch="cnn", width=8, depth=4), (1, 8, 8), 10)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 2  # 8 -> 4 -> 2
    model = build_model(ModelConfig(arch="cnn", width=8, depth=4), (3, 32, 32), 10)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 4  # 32 -> 2


def test_cnn_channels_double_per_block() -> None:
    model = build_model(ModelConfig(arch="cnn", width=8, depth=3), (3, 32, 32), 10)
    convs = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs == [8, 16, 32]


def test_dropout_follows_hidden_layers_and_optionally_conv_blocks() -> None:
    cfg = ModelConfig(arch="cnn", width=8, depth=2, dropout=0.3, dropout_conv=True)
    drops = [m for m in build_model(cfg, (1, 8, 8), 10).modules() if isinstance(m, Dropout)]
    assert [d.channel for d in drops] == [True, True, False]
    mlp = build_model(ModelConfig(arch="mlp", depth=3, dropout=0.3), (1, 8, 8), 10)
    assert sum(isinstance(m, Dropout) for m in mlp.modules()) == 3


def test_dropconnect_replaces_dropout_on_layers_that_read_hidden_units() -> None:
    cfg = ModelConfig(arch="mlp", width=16, depth=2, dropout=0.3, dropconnect=True)
    model = build_model(cfg, (1, 8, 8), 10)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [isinstance(m, DropConnectLinear) for m in linears] == [False, True, True]
    assert not any(isinstance(m, Dropout) for m in model.modules())


def test_eval_mode_is_deterministic_with_dropout() -> None:
    cfg = ModelConfig(arch="cnn", width=8, depth=2, dropout=0.5, dropout_conv=True)
    model = build_model(cfg, (1, 8, 8), 10).eval()
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


@pytest.mark.parametrize(
    ("activation", "layer"), [("relu", nn.ReLU), ("sigmoid", nn.Sigmoid), ("tanh", nn.Tanh)]
)
@pytest.mark.parametrize(("arch", "hidden"), [("mlp", 3), ("cnn", 4)])  # cnn: 3 blocks + head
def test_every_hidden_layer_uses_the_configured_activation(
    arch: str, hidden: int, activation: str, layer: type[nn.Module]
) -> None:
    cfg = ModelConfig(arch=arch, width=8, depth=3, activation=activation)  # type: ignore[arg-type]
    model = build_model(cfg, (1, 8, 8), 10)
    kinds = [type(m) for m in model.modules() if isinstance(m, nn.ReLU | nn.Sigmoid | nn.Tanh)]
    assert kinds == [layer] * hidden
    assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)


def test_dropout_and_dropconnect_follow_the_configured_rule() -> None:
    cfg = ModelConfig(arch="cnn", width=8, depth=2, dropout=0.3, dropout_conv=True)
    for rule in ("inverted", "weight_scaling"):
        model = build_model(cfg.model_copy(update={"dropout_rule": rule}), (1, 8, 8), 10)
        drops = [m for m in model.modules() if isinstance(m, Dropout)]
        assert len(drops) == 3 and {d.rule for d in drops} == {rule}
        dc = ModelConfig(arch="mlp", width=8, dropout=0.3, dropconnect=True, dropout_rule=rule)  # type: ignore[arg-type]
        layers = [m for m in build_model(dc, (1, 8, 8), 10).modules()]
        assert {m.rule for m in layers if isinstance(m, DropConnectLinear)} == {rule}
