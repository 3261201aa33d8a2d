"""Evaluate a fitted pipeline on the test split: metrics, curve data and feature importance."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from mlops_template.dataset import CATEGORICAL, NUMERIC, feature_names
from mlops_template.errors import UserError
from mlops_template.params import DEFAULT_IMPORTANCE_ROWS

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from sklearn.pipeline import Pipeline

# Metrics, curve points, importances and the package's reference statistics are rounded to this
# many decimals; the report treats smaller differences as noise.
DECIMALS = 6
# Every metric `compute_metrics` returns, and whether a higher value is better. The report's
# better/worse marks and the deploy gate (`deploy.gate.metric` picks one) read it: a new metric is
# added here and in `compute_metrics` together.
HIGHER_IS_BETTER: dict[str, bool] = {
    "accuracy": True,
    "balanced_accuracy": True,
    "f1_macro": True,
    "precision_macro": True,
    "recall_macro": True,
    "roc_auc": True,
    "log_loss": False,
}
# Curve files keep at most this many points whatever the size of the test split, so that
# `dvc plots` and a pull-request comment can show them (docs/architecture.md, "Bounded outputs").
MAX_CURVE_POINTS = 1000


@dataclass
class Evaluation:
    """Everything the train stage reports about a model on held-out rows."""

    metrics: dict[str, float]
    classes: list[str]
    actual: np.ndarray  # the test labels, as strings
    predicted: np.ndarray  # the class of highest probability per test row
    probabilities: np.ndarray
    confusion: pd.DataFrame  # actual, predicted, count: one row per pair of classes
    roc: pd.DataFrame  # fpr, tpr (positive class, or micro-average over classes)
    precision_recall: pd.DataFrame  # recall, precision (same averaging)
    importance: pd.DataFrame  # feature, importance (raw input columns, descending)
    importance_method: str


def compute_metrics(
    actual: np.ndarray, probabilities: np.ndarray, classes: list[str]
) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro F1/precision/recall, ROC AUC (one-vs-rest), log loss.

    A metric these rows leave undefined (scikit-learn warns or raises, or the value is not
    finite) is a UserError naming it and why: a NaN must never reach metrics.json or MLflow.
    """
    import numpy as np
    from sklearn import metrics

    predicted = np.asarray(classes)[probabilities.argmax(axis=1)]
    if len(classes) == 2:
        roc_auc = partial(metrics.roc_auc_score, actual == classes[1], probabilities[:, 1])
    else:
        roc_auc = partial(
            metrics.roc_auc_score, actual, probabilities, multi_class="ovr", labels=classes
        )
    averaged = {"average": "macro", "zero_division": 0}
    scores: dict[str, Callable[[], float]] = {
        "accuracy": partial(metrics.accuracy_score, actual, predicted),
        "balanced_accuracy": partial(metrics.balanced_accuracy_score, actual, predicted),
        "f1_macro": partial(metrics.f1_score, actual, predicted, **averaged),
        "precision_macro": partial(metrics.precision_score, actual, predicted, **averaged),
        "recall_macro": partial(metrics.recall_score, actual, predicted, **averaged),
        "roc_auc": roc_auc,
        "log_loss": partial(metrics.log_loss, actual, probabilities, labels=classes),
    }
    values, undefined = {}, {}
    for name, score in scores.items():
        with warnings.catch_warnings():
            # UndefinedMetricWarning is a UserWarning, as is "y_pred contains classes not in
            # y_true": either way the number would not mean what its name says.
            warnings.simplefilter("error", UserWarning)
            try:
                value = float(score())
            except (ValueError, UserWarning) as error:
                undefined[name] = " ".join(str(error).split())
                continue
        if not math.isfinite(value):
            undefined[name] = f"it is {value}"
        values[name] = round(value, DECIMALS)
    if undefined:
        raise UserError(undefined_metrics(undefined, actual, classes))
    return values


def undefined_metrics(reasons: dict[str, str], actual: np.ndarray, classes: list[str]) -> str:
    """One line naming the undefined metrics and the cause: a class the split lacks, if one."""
    names = ", ".join(reasons)
    subject = f"metric {names} is" if len(reasons) == 1 else f"metrics {names} are"
    present = set(actual)
    absent = [label for label in classes if label not in present]
    unseen = sorted(present - set(classes))
    if absent or unseen:
        causes = [f"{_classes(absent)} no test rows"] if absent else []
        causes += [f"{_classes(unseen)} test rows but no training rows"] if unseen else []
        cause = f"{' and '.join(causes)}; add rows or merge rare classes"
    elif len(reasons) == 1:
        [cause] = reasons.values()
    else:
        cause = "; ".join(f"{name}: {reason}" for name, reason in reasons.items())
    return f"train: {subject} undefined on the test split: {cause}"


def _classes(labels: list[str]) -> str:
    names = ", ".join(repr(str(label)) for label in labels)
    return f"class {names} has" if len(labels) == 1 else f"classes {names} have"


def higher_is_better(metric: str) -> bool | None:
    """Whether a higher value of `metric` is better; None for a metric not in HIGHER_IS_BETTER.

    The last part of a qualified name decides: `log_loss`, `val.log_loss`, `metrics.json: log_loss`.
    """
    name = metric.rsplit(":", 1)[-1].rsplit(".", 1)[-1].strip()
    return HIGHER_IS_BETTER.get(name)


def spaced(length: int, points: int) -> np.ndarray:
    """Indices of at most `points` evenly spaced positions, the first and last included."""
    import numpy as np

    return np.unique(np.linspace(0, length - 1, min(length, points)).round().astype(int))


def thin(frame: pd.DataFrame, points: int = MAX_CURVE_POINTS) -> pd.DataFrame:
    """At most `points` rows, evenly spaced along the curve, the first and last always kept."""
    return frame.iloc[spaced(len(frame), points)].reset_index(drop=True)


def curve_data(
    actual: np.ndarray, probabilities: np.ndarray, classes: list[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ROC and precision-recall points (at most MAX_CURVE_POINTS each): the positive class if
    binary, else micro-averaged."""
    import numpy as np
    import pandas as pd
    from sklearn.metrics import precision_recall_curve, roc_curve

    if len(classes) == 2:
        truth, scores = np.asarray(actual) == classes[1], probabilities[:, 1]
    else:
        truth = (np.asarray(actual)[:, None] == np.asarray(classes)[None, :]).ravel()
        scores = probabilities.ravel()
    fpr, tpr, _ = roc_curve(truth, scores)
    precision, recall, _ = precision_recall_curve(truth, scores)
    roc = thin(pd.DataFrame({"fpr": fpr, "tpr": tpr})).round(DECIMALS)
    pr = thin(pd.DataFrame({"recall": recall, "precision": precision})).round(DECIMALS)
    return roc, pr


def confusion_counts(actual: np.ndarray, predicted: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """The confusion matrix as (actual, predicted, count) rows, zeros included: classes squared
    rows, whatever the number of test rows."""
    import numpy as np
    import pandas as pd
    from sklearn.metrics import confusion_matrix

    matrix = confusion_matrix(actual, predicted, labels=classes)
    return pd.DataFrame(
        {
            "actual": np.repeat(classes, len(classes)),
            "predicted": np.tile(classes, len(classes)),
            "count": matrix.ravel(),
        }
    )


def source_columns(pipeline: Pipeline, schema: dict[str, Any]) -> list[str] | None:
    """The raw column behind each column the estimator sees (one-hot levels map to their column),
    or None when the preprocessing is not the one model.py builds (a step added or renamed)."""
    from mlops_template.model import CATEGORICAL_COLUMNS, ENCODE, PREPROCESS

    sources = feature_names(schema, NUMERIC)
    categorical = feature_names(schema, CATEGORICAL)
    try:
        if categorical:
            preprocess = pipeline.named_steps[PREPROCESS]
            encoder = preprocess.named_transformers_[CATEGORICAL_COLUMNS][ENCODE]
            for name, levels in zip(categorical, encoder.categories_, strict=True):
                sources.extend([name] * len(levels))
        width = len(pipeline[:-1].get_feature_names_out())
    except (KeyError, AttributeError, TypeError, ValueError):
        return None
    return sources if len(sources) == width else None


def feature_importance(
    pipeline: Pipeline,
    schema: dict[str, Any],
    features: pd.DataFrame,
    actual: pd.Series,
    random_state: int,
    max_rows: int,
) -> tuple[pd.DataFrame, str]:
    """Importance per raw column: the model's own where it has one, else permutation importance
    on a seeded sample of at most `max_rows` test rows."""
    import pandas as pd

    estimator = pipeline[-1]
    own = hasattr(estimator, "feature_importances_")
    sources = source_columns(pipeline, schema) if own else None
    if own and sources is None:
        log.warning(
            "feature importance: the preprocessing is not model.py's columns -> one-hot levels, "
            "so the model's own importances cannot be mapped to raw columns; using permutation "
            "importance"
        )
    if sources is not None:
        values = pd.Series(estimator.feature_importances_, index=sources)
        values = values.groupby(level=0, sort=False).sum()
        method = "impurity"
    else:
        from sklearn.inspection import permutation_importance

        sample = features
        if len(features) > max_rows:
            sample = features.sample(max_rows, random_state=random_state)
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
    importance_rows: int = DEFAULT_IMPORTANCE_ROWS,
) -> Evaluation:
    """Score the fitted pipeline on held-out rows, predicted once for every metric and plot."""
    import numpy as np

    classes = [str(label) for label in pipeline.classes_]
    probabilities = pipeline.predict_proba(features)
    labels = actual.to_numpy(dtype=object)
    # First: undefined metrics stop the stage before the slower curves and importance.
    metrics = compute_metrics(labels, probabilities, classes)
    predicted = np.asarray(classes, dtype=object)[probabilities.argmax(axis=1)]
    roc, pr = curve_data(labels, probabilities, classes)
    importance, method = feature_importance(
        pipeline, schema, features, actual, random_state, importance_rows
    )
    return Evaluation(
        metrics=metrics,
        classes=classes,
        actual=labels,
        predicted=predicted,
        probabilities=probabilities,
        confusion=confusion_counts(labels, predicted, classes),
        roc=roc,
        precision_recall=pr,
        importance=importance,
        importance_method=method,
    )
