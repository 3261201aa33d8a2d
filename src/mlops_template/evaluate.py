"""Evaluate a fitted pipeline on the test split: metrics, curve data and feature importance."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mlops_template.dataset import CATEGORICAL, NUMERIC, feature_names

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from sklearn.pipeline import Pipeline

# Enough rows for stable permutation importance without making a large test split slow.
MAX_IMPORTANCE_ROWS = 2000
DECIMALS = 6


@dataclass
class Evaluation:
    """Everything the train stage reports about a model on held-out rows."""

    metrics: dict[str, float]
    classes: list[str]
    actual: list[str]
    predicted: list[str]
    probabilities: np.ndarray
    roc: pd.DataFrame  # fpr, tpr (positive class, or micro-average over classes)
    precision_recall: pd.DataFrame  # recall, precision (same averaging)
    importance: pd.DataFrame  # feature, importance (raw input columns, descending)
    importance_method: str


def compute_metrics(
    actual: pd.Series, probabilities: np.ndarray, classes: list[str]
) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro F1/precision/recall, ROC AUC (one-vs-rest), log loss."""
    import numpy as np
    from sklearn import metrics

    predicted = np.asarray(classes)[probabilities.argmax(axis=1)]
    if len(classes) == 2:
        roc_auc = metrics.roc_auc_score(actual == classes[1], probabilities[:, 1])
    else:
        roc_auc = metrics.roc_auc_score(actual, probabilities, multi_class="ovr", labels=classes)
    values = {
        "accuracy": metrics.accuracy_score(actual, predicted),
        "balanced_accuracy": metrics.balanced_accuracy_score(actual, predicted),
        "f1_macro": metrics.f1_score(actual, predicted, average="macro", zero_division=0),
        "precision_macro": metrics.precision_score(
            actual, predicted, average="macro", zero_division=0
        ),
        "recall_macro": metrics.recall_score(actual, predicted, average="macro", zero_division=0),
        "roc_auc": roc_auc,
        "log_loss": metrics.log_loss(actual, probabilities, labels=classes),
    }
    return {name: round(float(value), DECIMALS) for name, value in values.items()}


def curve_data(
    actual: pd.Series, probabilities: np.ndarray, classes: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ROC and precision-recall points: the positive class if binary, else micro-averaged."""
    import pandas as pd
    from sklearn.metrics import precision_recall_curve, roc_curve
    from sklearn.preprocessing import label_binarize

    if len(classes) == 2:
        truth, scores = (actual == classes[1]).to_numpy(), probabilities[:, 1]
    else:
        truth = label_binarize(actual, classes=classes).ravel()
        scores = probabilities.ravel()
    fpr, tpr, _ = roc_curve(truth, scores)
    precision, recall, _ = precision_recall_curve(truth, scores)
    roc = pd.DataFrame({"fpr": fpr, "tpr": tpr}).round(DECIMALS)
    pr = pd.DataFrame({"recall": recall, "precision": precision}).round(DECIMALS)
    return roc, pr


def source_columns(pipeline: Pipeline, schema: dict[str, Any]) -> list[str]:
    """The raw column behind each column the estimator sees (one-hot levels map to their column)."""
    sources = feature_names(schema, NUMERIC)
    categorical = feature_names(schema, CATEGORICAL)
    if categorical:
        encoder = pipeline.named_steps["preprocess"].named_transformers_["categorical"]["encode"]
        for name, levels in zip(categorical, encoder.categories_, strict=True):
            sources.extend([name] * len(levels))
    return sources


def feature_importance(
    pipeline: Pipeline,
    schema: dict[str, Any],
    features: pd.DataFrame,
    actual: pd.Series,
    random_state: int,
) -> tuple[pd.DataFrame, str]:
    """Importance per raw column: the model's own where it has one, else permutation importance."""
    import pandas as pd

    estimator = pipeline.named_steps["model"]
    if hasattr(estimator, "feature_importances_"):
        values = pd.Series(estimator.feature_importances_, index=source_columns(pipeline, schema))
        values = values.groupby(level=0, sort=False).sum()
        method = "impurity"
    else:
        from sklearn.inspection import permutation_importance

        sample = features
        if len(features) > MAX_IMPORTANCE_ROWS:
            sample = features.sample(MAX_IMPORTANCE_ROWS, random_state=random_state)
        result = permutation_importance(
            pipeline, sample, actual.loc[sample.index], n_repeats=5, random_state=random_state
        )
        values = pd.Series(result.importances_mean, index=features.columns)
        method = "permutation"
    frame = values.rename("importance").rename_axis("feature").reset_index()
    frame["importance"] = frame["importance"].round(DECIMALS)
    frame = frame.sort_values(["importance", "feature"], ascending=[False, True], kind="stable")
    return frame.reset_index(drop=True), method


def evaluate(
    pipeline: Pipeline,
    schema: dict[str, Any],
    features: pd.DataFrame,
    actual: pd.Series,
    random_state: int,
) -> Evaluation:
    """Score the fitted pipeline on held-out rows."""
    import numpy as np

    classes = [str(label) for label in pipeline.classes_]
    probabilities = pipeline.predict_proba(features)
    roc, pr = curve_data(actual, probabilities, classes)
    importance, method = feature_importance(pipeline, schema, features, actual, random_state)
    return Evaluation(
        metrics=compute_metrics(actual, probabilities, classes),
        classes=classes,
        actual=actual.tolist(),
        predicted=np.asarray(classes)[probabilities.argmax(axis=1)].tolist(),
        probabilities=probabilities,
        roc=roc,
        precision_recall=pr,
        importance=importance,
        importance_method=method,
    )
