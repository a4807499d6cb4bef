"""The sweep specification: what to train, the search space, the search and its budget.

The request body of ``POST /sweeps`` and the YAML file of ``sweeps submit`` are both a
:class:`SweepSpec`, validated here with messages that name the field and the fix. The API
validates a request once and stores what it reports (planned trials, metric) beside it; the
sweep job validates the stored spec once; each trial gets a ready base configuration.

Parameters are named by the toolbox's dotted setting names (``optim.lr``, ``augment.hflip_p``;
see :func:`toolbox.config.setting_names`) and written the W&B way::

    optim.lr: {distribution: log_uniform_values, min: 0.001, max: 0.3}
    optim.momentum: {values: [0.0, 0.9]}
    model.norm: {value: batch}

Settings that only make sense together are swept as named ``variants``: each trial takes one
variant's settings whole, and the search treats the variant's name as one more parameter,
``variant``::

    variants:
      plain: {optim.momentum: 0.0}
      momentum: {optim.momentum: 0.9}
      nesterov: {optim.momentum: 0.9, optim.nesterov: true}
"""

from __future__ import annotations

import difflib
import itertools
import math
from collections.abc import Mapping
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter, ValidationError, field_validator, model_validator

from toolbox.config import (
    MACHINE_SETTINGS,
    DatasetName,
    ModelShape,
    StrictModel,
    TrialConfig,
    section_model,
    sections_with_rules,
    setting_names,
    setting_values,
)
from toolbox.metrics import METRIC_NAMES

Scalar = bool | int | float | str
GRID_LIMIT = 1000
"""A grid that expands past this many trials is refused."""
MAX_VALUES = 1000
"""The most values one parameter may list."""
MAX_LISTED = 5_000
"""The most values all parameters together may list (validation reads each once)."""
MAX_VARIANTS = 100
"""The most variants a sweep may name."""
VARIANT = "variant"
"""The parameter that picks one of the sweep's ``variants`` (made from them, never written)."""
MEASURE_GRAD_NOISE = "measure_grad_noise"
"""The setting without which trials do not report the ``grad_noise`` metric."""
CORNER_LIMIT = 1024
"""Rules that tie a section's settings together are checked on every combination of the
swept values (a range's ends) of that section while there are at most this many."""


class FixedParam(StrictModel):
    """One value for every trial."""

    value: Scalar

    @property
    def varies(self) -> bool:
        """Whether trials get different values of it."""
        return False

    @property
    def count(self) -> int | None:
        """How many values a grid enumerates."""
        return 1

    def grid_values(self) -> list[Scalar]:
        """The values a grid enumerates."""
        return [self.value]

    def corners(self) -> list[Scalar]:
        """The values validation checks: every value, a range's two ends."""
        return [self.value]


class ChoiceParam(StrictModel):
    """A list of values: enumerated by grid, sampled by random and Bayesian search."""

    values: list[Scalar] = Field(min_length=1, max_length=MAX_VALUES)

    @property
    def varies(self) -> bool:
        """Whether trials get different values of it (a one-value list is fixed)."""
        return len(self.values) > 1

    @property
    def count(self) -> int | None:
        """How many values a grid enumerates."""
        return len(self.values)

    def grid_values(self) -> list[Scalar]:
        """The values a grid enumerates."""
        return list(self.values)

    def corners(self) -> list[Scalar]:
        """The values validation checks: every value, a range's two ends."""
        return list(self.values)


class RangeParam(StrictModel):
    """A distribution: ``uniform`` and ``log_uniform_values`` over [min, max] (floats),
    ``int_uniform`` over the integers min..max inclusive."""

    distribution: Literal["uniform", "log_uniform_values", "int_uniform"]
    min: float
    max: float

    @model_validator(mode="after")
    def _check_bounds(self) -> RangeParam:
        if not self.min < self.max:
            raise ValueError(f"min ({self.min}) must be below max ({self.max})")
        if self.distribution == "log_uniform_values" and self.min <= 0:
            raise ValueError("log_uniform_values needs min > 0 (for example min: 0.0001)")
        if self.distribution == "int_uniform" and not (
            float(self.min).is_integer() and float(self.max).is_integer()
        ):
            raise ValueError("int_uniform needs integer min and max")
        return self

    @property
    def varies(self) -> bool:
        """Whether trials get different values of it (always: ``min`` is below ``max``)."""
        return True

    @property
    def count(self) -> int | None:
        """How many values a grid enumerates: the integers of an ``int_uniform`` range,
        counted, never listed; None for a continuous one."""
        if self.distribution == "int_uniform":
            return int(self.max) - int(self.min) + 1
        return None

    def grid_values(self) -> list[Scalar]:
        """The integers a grid enumerates (only for a grid within :data:`GRID_LIMIT`)."""
        assert self.count is not None and self.count <= GRID_LIMIT, self
        return list(range(int(self.min), int(self.max) + 1))

    def corners(self) -> list[Scalar]:
        """The values validation checks: the range's two ends."""
        if self.distribution == "int_uniform":
            return [int(self.min), int(self.max)]
        return [self.min, self.max]


Parameter = Annotated[FixedParam | ChoiceParam | RangeParam, Field(union_mode="left_to_right")]
PARAMETERS: TypeAdapter[dict[str, Parameter]] = TypeAdapter(dict[str, Parameter])
"""Reads a stored spec's ``parameters`` alone, without validating the whole spec again."""


def expand_variant(
    params: Mapping[str, Any], variants: Mapping[str, Mapping[str, Scalar]]
) -> dict[str, Any]:
    """A trial's settings: its sampled ``params`` with its ``variant`` replaced by the
    variant's settings."""
    out = {k: v for k, v in params.items() if k != VARIANT}
    if VARIANT in params:
        out |= variants[params[VARIANT]]
    return out


def varied_keys(parameters: Mapping[str, Parameter]) -> list[str]:
    """The parameters that differ between trials (they name the trials' runs)."""
    return [key for key, p in parameters.items() if p.varies]


class MetricSpec(StrictModel):
    """The metric that the search and early stopping optimise (per-epoch, last epoch counts)."""

    name: Literal[METRIC_NAMES] = "val_accuracy"  # type: ignore[valid-type]
    goal: Literal["maximize", "minimize"] = "maximize"

    @property
    def mode(self) -> Literal["max", "min"]:
        return "max" if self.goal == "maximize" else "min"


class EarlyStoppingSpec(StrictModel):
    """Early stopping of unpromising trials (Ray Tune's ASHA or median stopping rule).

    ``grace_period`` epochs always run; ASHA keeps the top ``1/reduction_factor`` of trials at
    each rung; the median rule stops a trial whose best result is worse than the median of the
    other trials' running averages, once ``min_samples_required`` trials have reported.
    """

    type: Literal["none", "asha", "median"] = "none"
    grace_period: int = Field(1, ge=1, le=1000)
    reduction_factor: float = Field(3.0, gt=1.0, le=100.0)
    brackets: int = Field(1, ge=1, le=10)
    min_samples_required: int = Field(3, ge=1, le=1000)


class ResourcesSpec(StrictModel):
    """Resources of one trial. ``gpu`` may be fractional so several trials share one GPU;
    ``None`` lets the driver choose from the cluster (a GPU share when GPUs exist, else 0)."""

    cpu: float = Field(1.0, gt=0.0, le=256.0)
    gpu: float | None = Field(None, ge=0.0, le=16.0)

    @field_validator("gpu")
    @classmethod
    def _whole_gpus_above_one(cls, v: float | None) -> float | None:
        if v is not None and v > 1 and not float(v).is_integer():
            raise ValueError("a trial needs a fraction of one GPU or whole GPUs (e.g. 0.25, 2)")
        return v


class PackingSpec(StrictModel):
    """Training trials of one shape together as one packed model (``toolbox.packed``).

    On by default: trials that share what shapes the computation (``toolbox.packing``) train
    as packs of up to ``max_members``, or as many as the driver's probe finds still gaining
    throughput on the device when ``max_members`` is not given. Every member stays a trial
    of its own (row, curve, MLflow run, outcome).
    """

    enabled: bool = True
    max_members: int | None = Field(None, ge=1, le=64)


class SweepSpec(StrictModel):
    """A hyperparameter sweep over the toolbox's settings."""

    name: str = Field("sweep", min_length=1, max_length=100, pattern=r"^[\w.\- ]+$")
    dataset: DatasetName = "digits"
    model: ModelShape = ModelShape()
    epochs: int = Field(5, ge=1, le=1000)
    parameters: dict[str, Parameter]
    method: Literal["grid", "random", "bayes"] = "random"
    max_trials: int | None = Field(None, ge=1, le=10000)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    metric: MetricSpec = MetricSpec()
    early_stopping: EarlyStoppingSpec = EarlyStoppingSpec()
    max_concurrent: int = Field(4, ge=1, le=1000)
    resources_per_trial: ResourcesSpec = ResourcesSpec()
    max_failures: int = Field(2, ge=0, le=20)
    packing: PackingSpec = PackingSpec()
    variants: dict[Annotated[str, Field(pattern=r"^[\w.\-]{1,50}$")], dict[str, Scalar]] = Field(
        default_factory=dict, max_length=MAX_VARIANTS
    )

    @model_validator(mode="before")
    @classmethod
    def _variant_parameter(cls, data: Any) -> Any:
        """Sweep the variants as the parameter ``variant`` over their names."""
        if not isinstance(data, dict) or not isinstance(data.get("variants"), dict):
            return data
        params = data.get("parameters")
        if data["variants"] and isinstance(params, dict) and VARIANT not in params:
            return {**data, "parameters": {**params, VARIANT: {"values": list(data["variants"])}}}
        return data

    @field_validator("parameters", mode="before")
    @classmethod
    def _names_and_shorthand(cls, v: Any) -> Any:
        """Check the names and the length of each list before any value is parsed (so a body
        costs what the toolbox's settings allow, whatever it lists), and accept ``lr: 0.1``
        for ``{value: 0.1}`` and ``lr: [..]`` for ``{values: [..]}``."""
        if not isinstance(v, dict):
            return v
        if not v:
            raise ValueError(
                "the search space is empty; add at least one setting, e.g. optim.lr: [0.01, 0.1]"
            )
        known = setting_names()
        out, listed = {}, 0
        for key, p in v.items():
            if key != VARIANT:
                _check_name(str(key), known)
            if isinstance(p, list):
                p = {"values": p}
            elif not isinstance(p, dict):
                p = {"value": p}
            values = p.get("values")
            if isinstance(values, list) and len(values) > MAX_VALUES:
                raise ValueError(
                    f"parameters.{key}: {len(values)} values, past the limit of {MAX_VALUES}; "
                    "list fewer, or give a distribution (min, max)"
                )
            listed += len(values) if isinstance(values, list) else 0
            if listed > MAX_LISTED:
                raise ValueError(
                    f"parameters: more than {MAX_LISTED} values listed in all; list fewer, or "
                    "give distributions (min, max)"
                )
            out[key] = p
        return out

    @field_validator("variants")
    @classmethod
    def _check_variant_settings(
        cls, v: dict[str, dict[str, Scalar]]
    ) -> dict[str, dict[str, Scalar]]:
        known = setting_names()
        for name, settings in v.items():
            if not settings:
                raise ValueError(f"variant {name!r} sets nothing; give it at least one setting")
            for key, value in settings.items():
                try:
                    _check_name(key, known)
                    _check_values(key, [value])
                except ValueError as err:
                    raise ValueError(f"variant {name!r}: {err}") from None
        return v

    @model_validator(mode="after")
    def _check_variants(self) -> SweepSpec:
        p = self.parameters.get(VARIANT)
        if p is None:
            return self
        names = p.grid_values() if not isinstance(p, RangeParam) else []
        unknown = [n for n in names if n not in self.variants]
        if isinstance(p, RangeParam) or unknown:
            raise ValueError(
                f"parameters.{VARIANT}: picks among the sweep's variants "
                f"({', '.join(self.variants) or 'none defined'}); list their names, or define "
                f"them under variants"
            )
        for name, settings in self.variants.items():
            both = sorted(set(settings) & set(self.parameters))
            if both:
                raise ValueError(
                    f"variants.{name}: {', '.join(both)} is also a parameter; set it in the "
                    "variants or in parameters, not both"
                )
        return self

    @model_validator(mode="after")
    def _check_metric(self) -> SweepSpec:
        # Only trials that measure grad_noise report it: the others could not be ranked.
        if self.metric.name != "grad_noise":
            return self
        flag = self.parameters.get(MEASURE_GRAD_NOISE)
        if flag is not None:
            measured = flag.corners()
        else:
            measured = [s.get(MEASURE_GRAD_NOISE, False) for s in self.variants.values()]
        if not measured or not all(v is True for v in measured):
            raise ValueError(
                f"metric.name=grad_noise is reported only by trials that measure it; set "
                f"parameters.{MEASURE_GRAD_NOISE}: true"
            )
        return self

    @model_validator(mode="after")
    def _check_search(self) -> SweepSpec:
        if self.method == "grid":
            for key, p in self.parameters.items():
                if isinstance(p, RangeParam) and p.distribution != "int_uniform":
                    raise ValueError(
                        f"parameters.{key}: method=grid cannot enumerate a {p.distribution} "
                        "distribution; give a list of values or use method=random or bayes"
                    )
            size = self.grid_size()
            if size > GRID_LIMIT:
                raise ValueError(
                    f"parameters: the grid expands to {size} trials, past the limit of "
                    f"{GRID_LIMIT}; list fewer values or use method=random with max_trials"
                )
            if self.max_trials is not None and self.max_trials < size:
                raise ValueError(
                    f"max_trials={self.max_trials} is below the grid's {size} trials; "
                    "raise max_trials or drop it (a grid runs every point once)"
                )
        self._check_configs()
        return self

    def grid_size(self) -> int:
        """Number of points of the grid, counted (a range is never listed). Only for grids:
        they hold no continuous range."""
        counts = [p.count for p in self.parameters.values()]
        assert None not in counts, "a continuous range spans no grid"
        return math.prod(c for c in counts if c is not None)

    @property
    def num_trials(self) -> int:
        """How many trials the sweep runs."""
        if self.method == "grid":
            return self.grid_size()
        return self.max_trials or 10

    @cached_property
    def base_config(self) -> TrialConfig:
        """The trial configuration before any parameter is applied (built once per spec)."""
        return TrialConfig.model_validate(
            {
                "data": {"dataset": self.dataset},
                "model": self.model.model_dump(),
                "epochs": self.epochs,
                "seed": self.seed,
            }
        )

    def trial_config(self, params: dict[str, Any]) -> TrialConfig:
        """The configuration of one trial: the base with the sampled ``params`` applied."""
        return TrialConfig.from_flat(expand_variant(params, self.variants), base=self.base_config)

    def _check_configs(self) -> None:
        """Validate every parameter's values, and their combinations where few enough.

        A value that is invalid on its own (out of range, wrong type) is reported against its
        parameter: every listed value, and a range's two ends. Rules that tie settings of a
        section together (Nesterov needs momentum, groups must divide the width, DropConnect
        needs a drop rate) are checked, section by section, on the combinations of those
        values while there are at most :data:`CORNER_LIMIT`, so a parameter that is only valid
        together with another can still be swept. Nothing is expanded: the cost grows with the
        values listed, never with a range's size.
        """
        for key, p in self.parameters.items():
            if key != VARIANT:
                _check_values(key, p.corners())
        base = self.base_config
        for section in sections_with_rules():
            options = self._section_options(section)
            if not options or math.prod(map(len, options)) > CORNER_LIMIT:
                continue
            start = getattr(base, section).model_dump()
            for combo in itertools.product(*options):
                _check_section(section, start, dict(itertools.chain(*combo)))

    def _section_options(self, section: str) -> list[list[tuple[tuple[str, Any], ...]]]:
        """Per swept parameter of ``section`` (the variants count as one), the settings of that
        section each of its values sets."""
        prefix = f"{section}."
        options: list[list[tuple[tuple[str, Any], ...]]] = [
            [((k, v),) for v in p.corners()]
            for k, p in self.parameters.items()
            if k.startswith(prefix)
        ]
        picked = self.parameters.get(VARIANT)
        if picked is not None and any(
            k.startswith(prefix) for s in self.variants.values() for k in s
        ):
            options.append(
                [
                    tuple((k, v) for k, v in self.variants[str(n)].items() if k.startswith(prefix))
                    for n in picked.corners()
                ]
            )
        return options


SWEEP_SETTINGS = {"epochs": "epochs", "data.dataset": "dataset"}
"""Settings of the whole sweep (setting -> its top-level field): every trial shares them, so
admission, early stopping and outcomes are judged against one value."""


def _check_name(key: str, known: list[str]) -> None:
    """Raise ValueError unless ``key`` is a setting a sweep may vary, with the nearest names."""
    if key in SWEEP_SETTINGS:
        field = SWEEP_SETTINGS[key]
        raise ValueError(
            f"'{key}' is a setting of the whole sweep, not a parameter: remove it from "
            f"parameters and set the top-level field {field} (to train trials longer, "
            "continue them)"
        )
    if key in MACHINE_SETTINGS:
        raise ValueError(
            f"'{key}' is a deployment setting of the workers (SWEEPS_DATA_DIR, "
            "SWEEPS_DATA_DOWNLOAD), not a sweep parameter; remove it from parameters"
        )
    if key not in known:
        near = difflib.get_close_matches(key[:200], known, n=3)
        hint = f"did you mean {', '.join(near)}?" if near else "see toolbox/config.py"
        raise ValueError(f"unknown setting '{key[:200]}'; {hint}")


def _check_values(key: str, values: list[Scalar]) -> None:
    """Raise ValueError naming the parameter and the value if one is invalid alone."""
    try:
        setting_values(key).validate_python(values)
    except ValidationError as err:
        first = err.errors()[0]
        value = values[int(first["loc"][0])] if first["loc"] else values[0]
        raise ValueError(
            f"parameters.{key}: {key}={value!r} is invalid: {key}: {first['msg']}"
        ) from None


def _check_section(section: str, start: dict[str, Any], combo: dict[str, Any]) -> None:
    """Raise ValueError naming the combination if it breaks a rule of its section."""
    values = start | {key.split(".", 1)[1]: value for key, value in combo.items()}
    try:
        section_model(section).model_validate(values)
    except ValidationError as err:
        first = err.errors()[0]
        shown = ", ".join(f"{k}={v!r}" for k, v in combo.items())
        raise ValueError(f"parameters: {shown} is invalid: {section}: {first['msg']}") from None
