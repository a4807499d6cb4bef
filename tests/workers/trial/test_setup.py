"""The trial's side of the sweep: its configuration, built once from the driver's setup."""

from __future__ import annotations

import pytest

from tests.workers.sweeps import digits_spec
from toolbox.config import TrialConfig
from workers.trial.setup import TrialSetup, trial_config


def _setup(gpus: float = 0.0) -> TrialSetup:
    spec = digits_spec({"optim.lr": [0.01, 0.1]}, epochs=4, seed=7)
    return TrialSetup(base=spec.base_config, metric="val_loss", mode="min", cpus=1.0, gpus=gpus)


def test_a_trial_builds_its_configuration_once_from_the_shared_base(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    setup = _setup()
    built: list[object] = []
    validate = TrialConfig.model_validate.__func__  # type: ignore[attr-defined]

    def counting(cls: type[TrialConfig], obj: object, **kw: object) -> TrialConfig:
        built.append(obj)
        return validate(cls, obj, **kw)  # type: ignore[no-any-return]

    monkeypatch.setattr(TrialConfig, "model_validate", classmethod(counting))
    cfg = trial_config(setup, {"optim.lr": 0.1, "model.norm": "layer"})
    assert len(built) == 1
    assert (cfg.optim.lr, cfg.model.norm, cfg.epochs, cfg.seed) == (0.1, "layer", 4, 7)
    assert cfg.model.width == 32 and cfg.device == "cpu"


def test_a_trial_without_a_gpu_share_trains_on_the_cpu_whatever_it_asks() -> None:
    assert trial_config(_setup(gpus=0.0), {"device": "cuda"}).device == "cpu"


def test_an_invalid_combination_fails_the_trial_with_the_field() -> None:
    with pytest.raises(ValueError, match=r"optim\.momentum"):
        trial_config(_setup(), {"optim.nesterov": True, "optim.momentum": 0.0})
