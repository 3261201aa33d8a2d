"""Every supported model fits messy data; hyperparameters are checked against the estimator."""

from __future__ import annotations

import numpy as np
import pytest

from mlops_template.dataset import coerce_features
from mlops_template.errors import UserError
from mlops_template.model import build_estimator, build_pipeline
from mlops_template.params import ESTIMATORS, ProcessParams, TrainParams
from mlops_template.stages.process import infer_schema, split

from .conftest import messy_frame


def fit(model: str, labels: tuple, hyperparameters: dict | None = None):
    frame = messy_frame(labels=labels)
    schema = infer_schema(frame, "label")
    train_rows, test_rows = split(frame, "label", ProcessParams(test_size=0.3, random_state=0))
    train, test = frame.iloc[train_rows], frame.iloc[test_rows]
    estimator = build_estimator(TrainParams(model, 0, hyperparameters or {}))
    pipeline = build_pipeline(schema, estimator)
    pipeline.fit(coerce_features(train, schema), train["label"].astype(str))
    return pipeline, coerce_features(test, schema), schema


@pytest.mark.parametrize("model", sorted(ESTIMATORS))
@pytest.mark.parametrize("labels", [("no", "yes"), ("ant", "bee", "cat")])
def test_each_model_learns_binary_and_multiclass(model, labels):
    pipeline, test, _ = fit(model, labels)
    probabilities = pipeline.predict_proba(test)
    assert probabilities.shape == (len(test), len(labels))
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    assert list(pipeline.classes_) == sorted(labels)


def test_unseen_category_and_all_missing_row_are_predicted():
    pipeline, test, _ = fit("logistic_regression", ("ant", "bee", "cat"))
    odd = test.head(2).copy()
    odd.iloc[0, odd.columns.get_loc("colour")] = "ultraviolet"
    odd.iloc[1] = np.nan
    probabilities = pipeline.predict_proba(odd)
    assert np.isfinite(probabilities).all()


def test_random_state_comes_from_params():
    estimator = build_estimator(TrainParams("random_forest", 123, {"n_estimators": 5}))
    assert estimator.get_params()["random_state"] == 123
    assert estimator.get_params()["n_estimators"] == 5


def test_unknown_hyperparameter_is_named_with_the_valid_ones():
    with pytest.raises(
        UserError,
        match=r"train\.random_forest\.depth: not a hyperparameter of RandomForestClassifier "
        r"\(valid: .*max_depth",
    ):
        build_estimator(TrainParams("random_forest", 0, {"depth": 3}))


def test_out_of_range_hyperparameter_fails_before_fitting():
    with pytest.raises(UserError, match=r"train\.decision_tree: The 'max_depth' parameter"):
        build_estimator(TrainParams("decision_tree", 0, {"max_depth": -1}))


@pytest.mark.parametrize("model", ["random_forest", "hist_gradient_boosting"])
def test_the_fitted_model_does_not_depend_on_the_cores(model):
    import io

    import joblib

    from mlops_template.dataset import label_strings
    from mlops_template.stages.train import fit_and_evaluate

    frame = messy_frame(300)
    schema = infer_schema(frame, "label")
    train_rows, test_rows = split(frame, "label", ProcessParams(test_size=0.3, random_state=0))
    parts = [
        (coerce_features(frame.iloc[rows], schema), label_strings(frame["label"].iloc[rows]))
        for rows in (train_rows, test_rows)
    ]
    saved = []
    for cores in (1, -1):
        trained = fit_and_evaluate(schema, *parts, TrainParams(model, 0, n_jobs=cores))
        buffer = io.BytesIO()
        joblib.dump(trained.pipeline, buffer)
        saved.append(buffer.getvalue())
        if model == "random_forest":
            assert trained.pipeline.named_steps["model"].n_jobs is None, "served on one core"
    assert saved[0] == saved[1]
