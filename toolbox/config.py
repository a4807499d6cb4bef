"""The one typed configuration of a training trial.

A :class:`TrialConfig` holds every toolbox setting a sweep can vary. It validates itself with
messages that name the field and the fix, round-trips through JSON, and flattens to dotted
names (``optim.lr``, ``augment.hflip_p``) that the sweep search space and MLflow parameters use.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

DatasetName = Literal["digits", "mnist", "fashion_mnist", "cifar10"]
InputNorm = Literal["none", "unit", "symmetric", "standardize", "per_instance"]
"""Input normalization: none; to [0, 1] (``unit``); to [-1, 1] (``symmetric``); zero mean and
unit variance per channel with training-split statistics (``standardize``); zero mean and unit
variance per sample (``per_instance``)."""
HiddenNorm = Literal["none", "batch", "layer", "instance", "group"]
Arch = Literal["mlp", "cnn"]
Activation = Literal["relu", "sigmoid", "tanh"]
"""Hidden units' nonlinearity; ``sigmoid`` and ``tanh`` saturate, which is why inputs and hidden
layers are normalized."""
DropoutRule = Literal["inverted", "weight_scaling"]
"""How dropout keeps expected outputs: ``inverted`` scales kept units by 1 / (1 - p) while
training and changes nothing at test; ``weight_scaling`` leaves training unscaled and multiplies
outgoing weights (equivalently the unit's output) by 1 - p at test."""
DeviceName = Literal["auto", "cpu", "cuda"]

PARTITION_SIZES: dict[str, int] = {
    "digits": 1797,
    "mnist": 60000,
    "fashion_mnist": 60000,
    "cifar10": 50000,
}
"""Labelled images of each data set's official training partition (before the split)."""


class StrictModel(BaseModel):
    """Base of every settings model: unknown keys are errors, and instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(StrictModel):
    """Which data set to train on and how to split it.

    Attributes:
        dataset: ``digits`` (scikit-learn's bundled 8x8 images, offline) or a torchvision set.
        data_dir: where torchvision data sets live (downloaded there when a network is
            available); ``None`` means ``~/.cache/toolbox-sweeps/data``.
        val_fraction: share of the training data held out for validation.
        split_seed: seed of the train/validation split, fixed so every trial sees the same split.
        train_size: train on the first ``train_size`` samples of that fixed training split
            (small-data regimes); ``None`` uses all of it. The validation split is unchanged.
        download: let torchvision try to download a missing data set.
    """

    dataset: DatasetName = "digits"
    data_dir: str | None = None
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    split_seed: int = Field(0, ge=0, le=2**31 - 1)
    train_size: int | None = Field(None, ge=1)
    download: bool = True

    def train_split_size(self, partition_size: int) -> int:
        """Samples the seeded split leaves for training out of ``partition_size`` labelled ones."""
        return partition_size - max(1, round(partition_size * self.val_fraction))

    @model_validator(mode="after")
    def _check_train_size(self) -> DataConfig:
        # The official partitions' sizes bound it here; files of another size in data_dir are
        # checked when they are loaded (toolbox.data).
        available = self.train_split_size(PARTITION_SIZES[self.dataset])
        if self.train_size is not None and self.train_size > available:
            raise ValueError(
                f"data.train_size={self.train_size} is larger than the training split of "
                f"{self.dataset} ({available} samples with data.val_fraction="
                f"{self.val_fraction}); choose at most {available}, or none for all of it"
            )
        return self


class AugmentConfig(StrictModel):
    """Training-time augmentation. Every sample draws its own transform.

    All probabilities are per sample; a strength of 0 (or probability 0) turns a tool off.

    Attributes:
        hflip_p: probability of flipping left/right.
        vflip_p: probability of flipping up/down.
        affine_p: probability of applying a random affine transform.
        rotate_deg: rotation drawn uniformly from [-rotate_deg, rotate_deg].
        translate: shift drawn uniformly from [-translate, translate] times the image size.
        scale: zoom factor drawn uniformly from [1 - scale, 1 + scale].
        shear_deg: shear angle drawn uniformly from [-shear_deg, shear_deg].
        color_p: probability of a colour-scheme change.
        brightness: brightness factor drawn from [1 - brightness, 1 + brightness].
        contrast: contrast factor drawn from [1 - contrast, 1 + contrast].
        saturation: saturation factor from [1 - saturation, 1 + saturation] (RGB only).
        hue: hue shift drawn from [-hue, hue] turns of the colour wheel (RGB only).
        channel_shuffle_p: probability of permuting the colour channels (RGB only).
        invert_p: probability of inverting intensities (a colour-scheme change that also makes
            sense for grayscale).
        noise_std: standard deviation of additive Gaussian noise on [0, 1] pixel values
            (applied after the other augmentations, before input normalization).
    """

    hflip_p: float = Field(0.0, ge=0.0, le=1.0)
    vflip_p: float = Field(0.0, ge=0.0, le=1.0)
    affine_p: float = Field(0.0, ge=0.0, le=1.0)
    rotate_deg: float = Field(0.0, ge=0.0, le=180.0)
    translate: float = Field(0.0, ge=0.0, le=0.5)
    scale: float = Field(0.0, ge=0.0, lt=1.0)
    shear_deg: float = Field(0.0, ge=0.0, le=45.0)
    color_p: float = Field(0.0, ge=0.0, le=1.0)
    brightness: float = Field(0.0, ge=0.0, le=1.0)
    contrast: float = Field(0.0, ge=0.0, le=1.0)
    saturation: float = Field(0.0, ge=0.0, le=1.0)
    hue: float = Field(0.0, ge=0.0, le=0.5)
    channel_shuffle_p: float = Field(0.0, ge=0.0, le=1.0)
    invert_p: float = Field(0.0, ge=0.0, le=1.0)
    noise_std: float = Field(0.0, ge=0.0, le=5.0)

    @property
    def enabled(self) -> bool:
        """Whether any augmentation is switched on."""
        return any(
            (
                self.hflip_p,
                self.vflip_p,
                self.affine_p,
                self.color_p,
                self.channel_shuffle_p,
                self.invert_p,
                self.noise_std,
            )
        )


class ModelShape(StrictModel):
    """The network's architecture and size (the part of :class:`ModelConfig` a sweep fixes).

    Attributes:
        arch: ``mlp`` or ``cnn``.
        width: hidden units per layer (MLP) or channels of the first conv block (CNN; each
            block doubles them).
        depth: hidden layers (MLP) or conv blocks (CNN).
    """

    arch: Arch = "mlp"
    width: int = Field(128, ge=1, le=4096)
    depth: int = Field(2, ge=1, le=8)


class ModelConfig(ModelShape):
    """The network: an MLP or a small CNN (its shape, see :class:`ModelShape`, and its layers).

    Attributes:
        activation: hidden units' nonlinearity (see :data:`Activation`).
        norm: hidden-layer normalization; all kinds have learned gamma and beta.
        groups: number of groups for ``norm='group'``; must divide every normalized width.
        dropout: dropout probability on fully connected layers.
        dropout_rule: how dropout and DropConnect keep expected outputs (see
            :data:`DropoutRule`).
        dropout_conv: also apply (channel) dropout after conv blocks.
        dropconnect: drop weights (DropConnect) instead of activations on fully connected
            layers, with the same probability ``dropout``.
        fc_width: hidden units of the CNN's fully connected head.
    """

    activation: Activation = "relu"
    norm: HiddenNorm = "none"
    groups: int = Field(4, ge=1, le=4096)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    dropout_rule: DropoutRule = "inverted"
    dropout_conv: bool = False
    dropconnect: bool = False
    fc_width: int = Field(128, ge=1, le=4096)

    def normalized_widths(self) -> list[int]:
        """Widths (features or channels) that the hidden normalization layers see."""
        if self.arch == "mlp":
            return [self.width] * self.depth
        return [self.width * 2**i for i in range(self.depth)]

    @model_validator(mode="after")
    def _check_norm(self) -> ModelConfig:
        if self.norm == "group":
            bad = [w for w in self.normalized_widths() if w % self.groups]
            if bad:
                raise ValueError(
                    f"model.groups={self.groups} does not divide the normalized width(s) "
                    f"{sorted(set(bad))}; choose groups that divide model.width "
                    f"(for example {_divisors_hint(self.width)})"
                )
        if self.norm == "instance" and self.arch == "mlp":
            raise ValueError(
                "model.norm='instance' normalizes over spatial positions, which an MLP does not "
                "have; use model.arch='cnn' or another model.norm (layer, group, batch, none)"
            )
        if self.dropconnect and self.dropout == 0.0:
            raise ValueError("model.dropconnect=true needs model.dropout > 0 (the drop rate)")
        return self


def _divisors_hint(n: int) -> str:
    divs = [d for d in range(1, n + 1) if n % d == 0 and d > 1][:5]
    return ", ".join(map(str, divs)) or "1"


class OptimConfig(StrictModel):
    """Minibatch SGD with (Nesterov) momentum.

    Attributes:
        lr: learning rate epsilon.
        momentum: momentum alpha; 0 is plain SGD.
        nesterov: Nesterov momentum; needs ``momentum > 0``.
        weight_decay: L2 penalty coefficient.
        batch_size: minibatch size; batches are reshuffled every epoch.
    """

    lr: float = Field(0.05, gt=0.0, le=10.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)
    batch_size: int = Field(128, ge=1, le=65536)

    @model_validator(mode="after")
    def _check_nesterov(self) -> OptimConfig:
        if self.nesterov and self.momentum <= 0.0:
            raise ValueError(
                "optim.nesterov=true needs optim.momentum > 0 (for example 0.9); "
                "set optim.momentum or turn nesterov off"
            )
        return self


class TrialConfig(StrictModel):
    """Everything one training trial needs.

    Attributes:
        data: the data set and its split.
        input_norm: input normalization (see :data:`InputNorm`).
        augment: training-time augmentation.
        model: the network.
        optim: the optimizer and batch size.
        epochs: number of passes over the training split.
        seed: seed of initialization, shuffling, augmentation and dropout.
        measure_grad_noise: also measure the ``grad_noise`` metric, the spread of the
            minibatch gradients over each epoch (off by default: it costs up to ~10% of a
            small model's epoch).
        device: ``auto`` picks CUDA when present.
    """

    data: DataConfig = DataConfig()
    input_norm: InputNorm = "standardize"
    augment: AugmentConfig = AugmentConfig()
    model: ModelConfig = ModelConfig()
    optim: OptimConfig = OptimConfig()
    epochs: int = Field(5, ge=1, le=1000)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    measure_grad_noise: bool = False
    device: DeviceName = "auto"

    def flatten(self) -> dict[str, Any]:
        """Return the settings as ``{dotted.name: value}``, e.g. ``{"optim.lr": 0.05}``."""
        return flatten_dict(self.model_dump(mode="json"))

    @classmethod
    def from_flat(cls, flat: dict[str, Any], base: TrialConfig | None = None) -> TrialConfig:
        """Build a config from dotted names, overriding ``base`` (defaults when ``None``).

        Raises:
            pydantic.ValidationError: unknown names or invalid values, naming the field.
        """
        merged = (base or cls()).model_dump(mode="json")
        for key, value in flat.items():
            _set_dotted(merged, key, value)
        return cls.model_validate(merged)


def flatten_dict(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts into ``{"a.b": value}``."""
    out: dict[str, Any] = {}
    for key, value in nested.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_dict(value, prefix=f"{name}."))
        else:
            out[name] = value
    return out


def _set_dotted(target: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = target
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"{dotted}: '{part}' is a setting, not a section")
        node = child
    node[leaf] = value


MACHINE_SETTINGS = ("data.data_dir", "data.download")
"""Settings of the machine that trains, not of a trial: where data sets live and whether they
may be downloaded there. Whoever runs the trainer sets them (the service: its deployment
settings); a sweep never varies them."""


def setting_names() -> list[str]:
    """All dotted setting names a sweep may vary."""
    return sorted(k for k in TrialConfig().flatten() if k not in MACHINE_SETTINGS)


@functools.cache
def setting_values(name: str) -> TypeAdapter[list[Any]]:
    """Validates a list of values of the dotted setting ``name`` alone: its type and bounds
    (the rules that tie it to other settings are its section's, see :func:`section_of`)."""
    model: type[BaseModel] = TrialConfig
    *sections, leaf = name.split(".")
    for section in sections:
        model = section_model(section)
    field = model.model_fields[leaf]
    value: Any = (
        Annotated[field.annotation, *field.metadata] if field.metadata else field.annotation
    )
    return TypeAdapter(list[value])


def section_model(section: str) -> type[BaseModel]:
    """The settings model of a section of :class:`TrialConfig` (``model``, ``optim``...)."""
    annotation = TrialConfig.model_fields[section].annotation
    assert isinstance(annotation, type) and issubclass(annotation, BaseModel), section
    return annotation


def sections_with_rules() -> list[str]:
    """The sections whose model checks rules across its settings (a model validator)."""
    return [
        name
        for name, field in TrialConfig.model_fields.items()
        if isinstance(field.annotation, type)
        and issubclass(field.annotation, BaseModel)
        and field.annotation.__pydantic_decorators__.model_validators
    ]
