"""params.yaml is validated up front, and every error names the key."""

from __future__ import annotations

import pytest

from mlops_template.errors import UserError
from mlops_template.params import (
    data_params,
    deploy_params,
    load_params,
    package_params,
    process_params,
    train_params,
)

from .conftest import REPO, params_dict


def test_repository_params_are_valid():
    raw = load_params(REPO / "params.yaml")
    assert data_params(raw).target == "species"
    assert 0 < process_params(raw).test_size < 1
    assert train_params(raw).model in {
        "random_forest",
        "logistic_regression",
        "hist_gradient_boosting",
        "decision_tree",
    }
    assert package_params(raw).max_batch_rows >= 1
    deploy = deploy_params(raw)
    assert deploy.gate.metric == "f1_macro"
    assert 1 <= deploy.canary.traffic_percent <= 99


@pytest.mark.parametrize("test_size", [0, 1, 1.5, -0.2])
def test_test_size_outside_zero_one_is_rejected(test_size):
    with pytest.raises(UserError, match=r"process\.test_size must be between 0 and 1"):
        process_params(params_dict(process={"test_size": test_size}))


def test_test_size_of_wrong_type_names_the_key():
    with pytest.raises(UserError, match=r"process\.test_size must be int or float, got 'a lot'"):
        process_params(params_dict(process={"test_size": "a lot"}))


def test_boolean_is_not_a_seed():
    with pytest.raises(UserError, match=r"process\.random_state must be int, got True"):
        process_params(params_dict(process={"random_state": True}))


def test_unknown_model_lists_the_supported_ones():
    with pytest.raises(UserError, match=r"train\.model 'xgboost' is not supported; .*forest"):
        train_params(params_dict(train={"model": "xgboost"}))


def test_only_the_chosen_models_hyperparameters_are_used():
    params = train_params(params_dict(train={"model": "decision_tree"}))
    assert params.hyperparameters == params_dict()["train"]["decision_tree"]


def test_missing_section_is_named():
    raw = params_dict()
    del raw["process"]
    with pytest.raises(UserError, match="section 'process' is missing"):
        process_params(raw)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(UserError, match="file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_params(bad)


def test_batch_limit_must_be_positive():
    for value in (0, True, "10"):
        with pytest.raises(UserError, match=r"package\.max_batch_rows must be a whole number"):
            package_params(params_dict(package={"max_batch_rows": value}))


def test_registry_model_name_must_name_a_model():
    from mlops_template.params import registry_params

    assert registry_params(params_dict()).model_name
    for name in ("", "  ", "team/model", "models:/x", 3):
        with pytest.raises(UserError, match=r"registry\.model_name"):
            registry_params(params_dict(registry={"model_name": name}))


@pytest.mark.parametrize(
    ("block", "values", "message"),
    [
        ("gate", {"metric": " "}, "deploy.gate.metric must name a test metric"),
        ("gate", {"higher_is_better": False}, "deploy.gate.higher_is_better is no longer read"),
        ("gate", {"tolerance": -0.1}, "deploy.gate.tolerance must be 0 or more"),
        ("canary", {"traffic_percent": 100}, "traffic_percent must be between 1 and 99"),
        ("canary", {"traffic_percent": 0.5}, "deploy.canary.traffic_percent must be int"),
        ("canary", {"probe_interval_seconds": 0}, "probe_interval_seconds above 0"),
        ("canary", {"observe_seconds": 5, "probe_interval_seconds": 10}, "at most observe_seconds"),
    ],
)
def test_deploy_gate_and_canary_settings_are_checked(block, values, message):
    raw = params_dict()
    raw["deploy"][block].update(values)
    with pytest.raises(UserError, match=message):
        deploy_params(raw)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("n_jobs", 0, r"train\.n_jobs must be a number of cores, or -1 for all, not 0"),
        ("n_jobs", "all", r"train\.n_jobs must be int, got 'all'"),
        ("importance_rows", 0, r"train\.importance_rows must be at least 1, got 0"),
        ("importance_rows", 2.5, r"train\.importance_rows must be int, got 2\.5"),
    ],
)
def test_cores_and_importance_sample_are_checked(key, value, message):
    with pytest.raises(UserError, match=message):
        train_params(params_dict(train={key: value}))


def test_cores_and_importance_sample_default_when_absent():
    raw = params_dict()
    for key in ("n_jobs", "importance_rows"):
        raw["train"].pop(key, None)
    params = train_params(raw)
    assert (params.n_jobs, params.importance_rows) == (-1, 2000)


@pytest.mark.parametrize("path", ['data/raw/"penguins".csv', "data/$HOME.csv", "data\\raw.csv"])
def test_a_csv_path_a_shell_would_change_is_rejected(path):
    with pytest.raises(UserError, match=r"params\.yaml: data\.csv must not contain .*rename"):
        data_params(params_dict(data={"csv": path}))


def test_a_csv_path_with_spaces_and_single_quotes_is_fine():
    assert data_params(params_dict(data={"csv": "data/raw/Jo's pen guins.csv"})).csv.endswith(
        "Jo's pen guins.csv"
    )
