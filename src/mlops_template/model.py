"""Build the scikit-learn Pipeline: preprocessing for raw columns, then the chosen estimator."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mlops_template.dataset import CATEGORICAL, NUMERIC, feature_names
from mlops_template.errors import UserError
from mlops_template.params import TrainParams

# What the categorical imputer puts in place of a missing value: a level of its own.
MISSING_LEVEL = "missing"
# The pipeline's step names. The ONNX export (onnx_export.py) and feature importance
# (evaluate.py) find the preprocessing by them. A step the export does not translate is named by
# the package stage in one line, and the model is then served with joblib.
PREPROCESS, ESTIMATOR = "preprocess", "model"
NUMERIC_COLUMNS, CATEGORICAL_COLUMNS = "numeric", "categorical"
IMPUTE, SCALE, ENCODE = "impute", "scale", "encode"

if TYPE_CHECKING:
    from sklearn.base import ClassifierMixin
    from sklearn.pipeline import Pipeline


def build_estimator(params: TrainParams) -> ClassifierMixin:
    """Instantiate the estimator and check every hyperparameter before anything is fitted."""
    module_name, class_name = params.estimator_import
    estimator_class = getattr(importlib.import_module(module_name), class_name)
    estimator = estimator_class()
    valid = estimator.get_params()
    prefix = f"params.yaml: train.{params.model}"
    for name in params.hyperparameters:
        if name not in valid:
            raise UserError(
                f"{prefix}.{name}: not a hyperparameter of {class_name} "
                f"(valid: {', '.join(sorted(valid))})"
            )
    settings: dict[str, Any] = dict(params.hyperparameters)
    if "random_state" in valid:
        settings.setdefault("random_state", params.random_state)
    estimator.set_params(**settings)
    # scikit-learn checks types and ranges at fit time; ask now so a bad value fails before work.
    try:
        estimator._validate_params()
    except (ValueError, TypeError) as error:
        raise UserError(f"{prefix}: {error}") from None
    return estimator


def build_pipeline(schema: dict[str, Any], estimator: ClassifierMixin) -> Pipeline:
    """Preprocessing lives in the saved model, so a served model takes raw feature values."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric = Pipeline(
        [
            # keep_empty_features: an all-missing column must not shift the feature count.
            (IMPUTE, SimpleImputer(strategy="median", keep_empty_features=True)),
            (SCALE, StandardScaler()),
        ]
    )
    # Missing is its own level; levels never seen in training encode as all zeros.
    categorical = Pipeline(
        [
            (IMPUTE, SimpleImputer(strategy="constant", fill_value=MISSING_LEVEL)),
            (ENCODE, OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
        ]
    )
    preprocess = ColumnTransformer(
        [
            (NUMERIC_COLUMNS, numeric, feature_names(schema, NUMERIC)),
            (CATEGORICAL_COLUMNS, categorical, feature_names(schema, CATEGORICAL)),
        ],
        verbose_feature_names_out=False,
    )
    return Pipeline([(PREPROCESS, preprocess), (ESTIMATOR, estimator)])
