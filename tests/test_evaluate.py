"""Metrics: a metric the test rows leave undefined is an error naming it, never a NaN."""

from __future__ import annotations

import numpy as np
import pytest

from mlops_template.errors import UserError
from mlops_template.evaluate import compute_metrics


def test_a_class_without_test_rows_is_named_with_the_metrics_it_leaves_undefined():
    actual = np.array(["ant"] * 4, dtype=object)
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    with pytest.raises(
        UserError,
        match=r"^train: metrics balanced_accuracy, roc_auc are undefined on the test split: "
        r"class 'bee' has no test rows; add rows or merge rare classes$",
    ):
        compute_metrics(actual, probabilities, ["ant", "bee"])


def test_a_metric_scikit_learn_cannot_compute_is_named_with_its_reason():
    actual = np.array(["ant", "bee", "ant", "bee"], dtype=object)
    probabilities = np.array([[0.9, 0.1], [np.nan, np.nan], [0.6, 0.4], [0.2, 0.8]])
    with pytest.raises(UserError, match=r"roc_auc: Input contains NaN\.; log_loss: Input contains"):
        compute_metrics(actual, probabilities, ["ant", "bee"])


def test_defined_metrics_are_finite_numbers():
    actual = np.array(["ant", "bee", "ant", "bee"], dtype=object)
    probabilities = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4], [0.2, 0.8]])
    metrics = compute_metrics(actual, probabilities, ["ant", "bee"])
    assert metrics["accuracy"] == 1.0
    assert metrics["roc_auc"] == 1.0


def test_every_metric_has_its_direction_and_only_those() -> None:
    """The report and the deploy gate read which way a metric improves from HIGHER_IS_BETTER."""
    import numpy as np

    from mlops_template.evaluate import HIGHER_IS_BETTER, compute_metrics, higher_is_better

    actual = np.array(["a", "b", "a", "b"], dtype=object)
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    assert set(compute_metrics(actual, probabilities, ["a", "b"])) == set(HIGHER_IS_BETTER)
    assert higher_is_better("metrics.json: log_loss") is False
    assert higher_is_better("val.f1_macro") is True
    assert higher_is_better("rmse") is None
