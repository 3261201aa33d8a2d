"""The ONNX graph computes what scikit-learn computes, for every estimator the template offers.

These tests are the alarm for library upgrades: the converter reads fitted attributes of
scikit-learn's steps (some of them private) and relies on ONNX Runtime's operators. When an
upgrade changes either, the package stage would quietly fall back to joblib; these fail instead,
naming the versions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from mlops_template import onnx_export
from mlops_template.dataset import read_schema, read_split
from mlops_template.model import build_estimator, build_pipeline
from mlops_template.params import TrainParams
from mlops_template.stages.process import process

from .conftest import REPO, messy_frame, params_dict

RANDOM_ROWS = 3000
CASES = {
    "random_forest": {"n_estimators": 100, "max_depth": 3},
    "random_forest deep": {"n_estimators": 30},
    "decision_tree": {"max_depth": 3},
    "decision_tree stump": {"max_depth": 1},
    "logistic_regression": {"C": 1.0, "max_iter": 1000},
    "hist_gradient_boosting": {"max_iter": 100, "max_leaf_nodes": 15},
    "hist_gradient_boosting no splits": {"max_iter": 5, "min_samples_leaf": 10_000},
}


def processed(directory: Path, csv: Path, target: str) -> tuple[dict, pd.DataFrame, Any, Any]:
    """(schema, train features, train labels, test features), split by the process stage."""
    params = params_dict(data={"csv": str(csv), "target": target})
    (directory / "params.yaml").write_text(yaml.safe_dump(params))
    process(csv, directory / "processed", directory / "params.yaml")
    schema = read_schema(directory / "processed" / "schema.json")
    train, labels = read_split(directory / "processed" / "train.parquet", schema)
    test, _ = read_split(directory / "processed" / "test.parquet", schema)
    return schema, train, labels, test


@pytest.fixture(scope="module")
def penguins(tmp_path_factory: pytest.TempPathFactory):
    """The bundled data: values on 0.1 mm and 25 g grids, so many rows sit on split points."""
    return processed(tmp_path_factory.mktemp("penguins"), REPO / "data/raw/penguins.csv", "species")


@pytest.fixture(scope="module")
def messy(tmp_path_factory: pytest.TempPathFactory):
    """Gaps in numeric and categorical columns, and two classes only."""
    directory = tmp_path_factory.mktemp("messy")
    messy_frame(n_rows=200, labels=("no", "yes")).to_csv(directory / "raw.csv", index=False)
    return processed(directory, directory / "raw.csv", "label")


def fitted(case: str, schema: dict, train: pd.DataFrame, labels: Any):
    """The template's pipeline with the case's estimator, fitted."""
    model = case.split(" ")[0]
    params = TrainParams(model=model, random_state=42, hyperparameters=CASES[case])
    return build_pipeline(schema, build_estimator(params)).fit(train, labels)


@pytest.mark.parametrize("data", ["penguins", "messy"])
@pytest.mark.parametrize("case", list(CASES))
def test_graph_matches_scikit_learn_on_edges_and_grid(
    case: str, data: str, request: pytest.FixtureRequest
) -> None:
    schema, train, labels, test = request.getfixturevalue(data)
    pipeline = fitted(case, schema, train, labels)
    model = onnx_export.to_onnx(pipeline, schema)
    rows = onnx_export.parity_rows(train, test, schema, RANDOM_ROWS, seed=1)
    parity = onnx_export.check_parity(pipeline, model, rows, schema)
    assert parity.holds, (
        f"ONNX no longer matches scikit-learn for {case} on {data} with "
        f"{onnx_export.versions()}: {parity}"
    )


def test_the_graph_is_the_same_bytes_every_time(penguins) -> None:
    schema, train, labels, _ = penguins
    pipeline = fitted("random_forest", schema, train, labels)
    assert onnx_export.to_onnx(pipeline, schema) == onnx_export.to_onnx(pipeline, schema)


def test_scaled_output_is_the_pipelines_numeric_preprocessing(penguins) -> None:
    """The second output is what the server checks against float32's range."""
    schema, train, labels, test = penguins
    pipeline = fitted("logistic_regression", schema, train, labels)
    session = onnx_export.session(onnx_export.to_onnx(pipeline, schema))
    feeds = onnx_export.feeds(test, schema, onnx_export.fill_value(pipeline))
    [scaled] = session.run([onnx_export.SCALED], feeds)
    numeric = pipeline[0].named_transformers_["numeric"]
    columns = [f["name"] for f in schema["features"] if f["kind"] == "numeric"]
    np.testing.assert_array_equal(scaled, numeric.transform(test[columns]))


def test_parity_rows_reach_the_edges(penguins) -> None:
    schema, train, _, test = penguins
    rows = onnx_export.parity_rows(train, test, schema, 500, seed=0)
    assert len(rows) > len(test) + 500
    assert rows.isna().all(axis=1).any()  # everything missing
    for name in train.columns:
        assert rows[name].isna().any()
    assert (rows["island"] == "never seen in training").any()
    assert (rows["island"] == "").any()
    body_mass = rows["body_mass_g"].dropna()
    assert body_mass.max() > 1e6
    assert body_mass.min() < -1e6
    midpoints = set(np.unique(train["body_mass_g"].dropna()))
    assert any(value not in midpoints and value % 12.5 == 0 for value in body_mass)  # between


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p.steps.append(("extra", p.steps[-1][1])), r"step\(s\) \['extra'\]"),
        (
            lambda p: setattr(
                p[0].named_transformers_["categorical"][-1], "handle_unknown", "error"
            ),
            "rejects unseen levels",
        ),
    ],
    ids=["three steps", "encoder rejecting unseen levels"],
)
def test_a_pipeline_it_cannot_translate_exactly_is_refused(penguins, change, message) -> None:
    schema, train, labels, _ = penguins
    pipeline = fitted("decision_tree", schema, train, labels)
    change(pipeline)
    with pytest.raises(onnx_export.ConversionError, match=message):
        onnx_export.to_onnx(pipeline, schema)


def with_added_numeric_step(schema: dict, train: pd.DataFrame, labels: Any, model: str):
    """model.py's pipeline with one more numeric step, as a user adds one there, fitted."""
    from sklearn.preprocessing import PolynomialFeatures

    params = TrainParams(model=model, random_state=42, hyperparameters=CASES[model])
    pipeline = build_pipeline(schema, build_estimator(params))
    numeric = pipeline.named_steps["preprocess"].transformers[0][1]
    numeric.steps.insert(1, ("square", PolynomialFeatures(degree=2, include_bias=False)))
    return pipeline.fit(train, labels)


def test_a_step_the_export_does_not_translate_is_named_in_one_line(
    penguins, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import joblib

    from mlops_template.errors import UserError
    from mlops_template.stages.package import onnx_model

    schema, train, labels, test = penguins
    pipeline = with_added_numeric_step(schema, train, labels, "random_forest")
    with pytest.raises(onnx_export.ConversionError, match=r"numeric preprocessing has the step"):
        onnx_export.to_onnx(pipeline, schema)
    joblib.dump(pipeline, tmp_path / "model.joblib")
    with pytest.raises(UserError, match=r"package.runtime is onnx, but .*\['square'\]"):
        onnx_model(tmp_path / "model.joblib", schema, train, test, "onnx")
    with caplog.at_level("WARNING"):
        model, _ = onnx_model(tmp_path / "model.joblib", schema, train, test, "auto")
    assert model is None
    [line] = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert "joblib" in line
    assert "['square']" in line


@pytest.mark.parametrize("model", ["random_forest", "logistic_regression"])
def test_evaluation_takes_an_added_step_without_a_traceback(penguins, model: str) -> None:
    from mlops_template.evaluate import evaluate

    schema, train, labels, _ = penguins
    pipeline = with_added_numeric_step(schema, train, labels, model)
    evaluation = evaluate(pipeline, schema, train, labels, random_state=0, importance_rows=200)
    assert evaluation.importance_method == "permutation"
    assert sorted(evaluation.importance["feature"]) == sorted(train.columns)
