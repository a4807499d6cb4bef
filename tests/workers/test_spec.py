"""SweepSpec validation: every rejection names the field and the fix; valid sweeps pass."""

import pytest
from pydantic import ValidationError

from workers.spec import GRID_LIMIT, SweepSpec


def _error(body: dict) -> str:
    with pytest.raises(ValidationError) as info:
        SweepSpec.model_validate(body)
    return " ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in info.value.errors())


def test_shorthand_values_become_fixed_and_choice_params():
    spec = SweepSpec.model_validate(
        {"parameters": {"optim.lr": 0.1, "model.norm": ["batch", "layer"]}, "method": "grid"}
    )
    assert spec.num_trials == 2
    assert spec.trial_config({"model.norm": "layer"}).model.norm == "layer"


def test_empty_search_space_is_refused_with_an_example():
    assert "search space is empty" in _error({"parameters": {}})


def test_unknown_setting_suggests_the_nearest_name():
    message = _error({"parameters": {"optim.lrr": 0.1}})
    assert "unknown setting 'optim.lrr'" in message and "optim.lr" in message


def test_out_of_range_value_names_the_parameter():
    message = _error({"parameters": {"optim.lr": [0.1, 20]}})
    assert "parameters.optim.lr" in message and "less than or equal to 10" in message


def test_nesterov_with_zero_momentum_is_refused():
    message = _error({"parameters": {"optim.nesterov": True, "optim.momentum": [0.0, 0.9]}})
    assert "optim.nesterov=true needs optim.momentum > 0" in message


def test_groups_must_divide_the_channels():
    message = _error({"parameters": {"model.norm": "group", "model.groups": [3, 4]}})
    assert "model.groups=3 does not divide" in message


def test_dropconnect_can_be_swept_together_with_a_drop_rate():
    spec = SweepSpec.model_validate(
        {"parameters": {"model.dropconnect": [True, False], "model.dropout": [0.2, 0.5]}}
    )
    assert spec.trial_config({"model.dropconnect": True, "model.dropout": 0.2}).model.dropconnect
    assert "needs model.dropout > 0" in _error(
        {"parameters": {"model.dropconnect": [True, False], "model.dropout": [0.0, 0.5]}}
    )


def test_grid_refuses_continuous_distributions_and_oversized_grids():
    message = _error(
        {
            "method": "grid",
            "parameters": {"optim.lr": {"distribution": "uniform", "min": 0.01, "max": 0.1}},
        }
    )
    assert "cannot enumerate" in message
    values = [round(0.01 * i, 2) for i in range(1, 40)]
    big = {
        "optim.lr": values,
        "optim.momentum": [0.0, 0.5, 0.9],
        "optim.batch_size": list(range(1, 11)),
    }
    assert GRID_LIMIT < 39 * 3 * 10
    assert "past the limit" in _error({"method": "grid", "parameters": big})


def test_int_uniform_grid_enumerates_integers():
    spec = SweepSpec.model_validate(
        {
            "method": "grid",
            "parameters": {"model.depth": {"distribution": "int_uniform", "min": 1, "max": 3}},
        }
    )
    assert spec.num_trials == 3


def test_unknown_top_level_key_is_refused():
    assert "Extra inputs are not permitted" in _error({"parameters": {"optim.lr": 0.1}, "foo": 1})


@pytest.mark.parametrize(
    "parameters", [{"data.data_dir": "/etc"}, {"data.download": [True, False]}], ids=str
)
def test_where_data_lives_is_the_deployments_choice_not_a_sweeps(parameters):
    (name,) = parameters
    message = _error({"parameters": parameters})
    assert f"'{name}' is a deployment setting" in message and "SWEEPS_DATA_DIR" in message


def test_lists_are_counted_before_any_value_is_parsed():
    one = _error({"parameters": {"optim.lr": [0.1] * 1001}})
    assert "parameters.optim.lr: 1001 values, past the limit of 1000" in one
    many = {f"augment.{k}_p": [i / 4000 for i in range(1000)] for k in ("hflip", "vflip")}
    fractions = ["affine_p", "color_p", "invert_p", "channel_shuffle_p", "noise_std"]
    many |= {f"augment.{k}": [i / 4000 for i in range(1000)] for k in fractions}
    many |= {k: [0.001 + i / 4000 for i in range(1000)] for k in ("optim.lr", "optim.momentum")}
    many |= {"model.dropout": [i / 4000 for i in range(1000)], "seed": [1, 2]}
    assert "more than 5000 values listed in all" in _error({"parameters": many})


def test_thousands_of_unknown_parameters_are_refused_by_the_first_name():
    message = _error({"parameters": {f"model.p{i}": [1, 2] for i in range(5000)}})
    assert "unknown setting 'model.p0'" in message


OPTIMIZERS = {
    "plain": {"optim.momentum": 0.0},
    "momentum": {"optim.momentum": 0.9},
    "nesterov": {"optim.momentum": 0.9, "optim.nesterov": True},
}


def test_variants_are_swept_as_one_parameter_and_applied_whole():
    body = {"parameters": {"optim.lr": [0.01, 0.1]}, "variants": OPTIMIZERS, "method": "grid"}
    spec = SweepSpec.model_validate(body)
    assert spec.num_trials == 6 and spec.parameters["variant"].grid_values() == list(OPTIMIZERS)
    optim = spec.trial_config({"optim.lr": 0.1, "variant": "nesterov"}).optim
    assert (optim.lr, optim.momentum, optim.nesterov) == (0.1, 0.9, True)
    assert spec.trial_config({"variant": "plain"}).optim.momentum == 0.0
    stored = spec.model_dump(mode="json")  # as the API stores it: validates again unchanged
    assert SweepSpec.model_validate(stored) == spec


def test_an_invalid_variant_is_refused_with_its_name_and_the_rule():
    bad = {"a": {"optim.nesterov": True}}  # with the swept momentum 0.0 below
    message = _error({"parameters": {"optim.momentum": [0.0, 0.9]}, "variants": bad})
    assert "optim.nesterov=true needs optim.momentum > 0" in message
    message = _error({"parameters": {"optim.lr": 0.1}, "variants": {"a": {"optim.momentm": 1}}})
    assert "variant 'a'" in message and "did you mean optim.momentum" in message


def test_a_setting_in_both_a_variant_and_the_parameters_is_refused():
    body = {"parameters": {"optim.momentum": [0.5]}, "variants": OPTIMIZERS}
    assert "optim.momentum is also a parameter" in _error(body)


def test_variant_names_must_be_defined():
    message = _error({"parameters": {"variant": ["plain"]}})
    assert "parameters.variant" in message and "define them under variants" in message


def test_grad_noise_metric_needs_every_trial_to_measure_it():
    metric = {"name": "grad_noise", "goal": "minimize"}
    message = _error({"parameters": {"optim.batch_size": [8, 64]}, "metric": metric})
    assert "metric.name=grad_noise" in message and "measure_grad_noise: true" in message
    swept = {"optim.batch_size": 8, "measure_grad_noise": [True, False]}
    assert "measure_grad_noise: true" in _error({"parameters": swept, "metric": metric})
    spec = SweepSpec.model_validate(
        {"parameters": {"optim.batch_size": [8, 64], "measure_grad_noise": True}, "metric": metric}
    )
    assert spec.metric.name == "grad_noise"
