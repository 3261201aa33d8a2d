"""Seldon Core v1 wrapper for the packaged scikit-learn model: verify, load, validate, predict.

This file is copied into the package directory next to `model.joblib` and `metadata.json` and is
loaded by `seldon-core-microservice Model` (Seldon expects one class per file, named like the file).
It runs in the serving environment (seldon-core 1.17.1, numpy 1, Flask 2), not the training one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from flask import Blueprint, request
from seldon_core.flask_utils import SeldonMicroserviceException
from seldon_core.user_model import SeldonNotImplementedError, SeldonResponse

logger = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parent
PREDICTION_PATHS = frozenset({"/api/v1.0/predictions", "/api/v0.1/predictions", "/predict"})


class BadRequest(SeldonMicroserviceException):
    """A request the client must fix: HTTP 400 MICROSERVICE_BAD_DATA carrying the message."""

    def __init__(self, message: str) -> None:
        super().__init__(message, status_code=400, reason="MICROSERVICE_BAD_DATA")

    def __str__(self) -> str:
        # gRPC answers carry str(exception); the base class leaves it empty.
        return self.message


class PackageError(Exception):
    """The package directory is unusable (tampered model, wrong library version, bad metadata)."""


def sha256_of(path: Path) -> str:
    """Return the hex sha256 of a file, read in chunks so large models need little memory."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_verified_model(package_dir: Path, metadata: dict[str, Any]) -> Any:
    """Unpickle the model only if its sha256 and scikit-learn version match the metadata."""
    import joblib
    import sklearn

    model_path = package_dir / metadata["model_file"]
    if not model_path.is_file():
        raise PackageError(f"model file {model_path} does not exist")
    # Unpickling runs code from the file, so the hash is checked before joblib ever opens it.
    actual = sha256_of(model_path)
    expected = metadata["model_sha256"]
    if actual != expected:
        raise PackageError(
            f"sha256 mismatch for {model_path}: metadata.json expects {expected}, the file has "
            f"{actual}; refusing to load a model file that is not the one that was packaged"
        )
    trained_with = metadata.get("versions", {}).get("scikit-learn")
    if trained_with != sklearn.__version__:
        raise PackageError(
            f"the model was trained with scikit-learn {trained_with} but this environment has "
            f"{sklearn.__version__}; install the serving requirements from the package"
        )
    return joblib.load(model_path)


def is_missing(value: Any) -> bool:
    """True for JSON null and NaN, the two ways a request can leave a value out."""
    return value is None or (isinstance(value, float) and math.isnan(value))


class Model:
    """Serves `predict_proba` of the packaged pipeline, each request checked against its schema."""

    def __init__(self, max_batch_rows: int | None = None) -> None:
        """Verify and load the model once, before Seldon forks its workers; exit if unusable."""
        metadata_path = PACKAGE_DIR / "metadata.json"
        try:
            self.metadata = json.loads(metadata_path.read_text())
            self.model = load_verified_model(PACKAGE_DIR, self.metadata)
        except (OSError, KeyError, ValueError, PackageError) as error:
            # Raised before any server process starts, so the microservice exits instead of
            # serving without a model; SystemExit keeps the log to one line, not a traceback.
            logger.critical("cannot start: %s", error)
            raise SystemExit(f"cannot start: {error}") from None
        features = self.metadata["features"]
        self.feature_names: list[str] = [feature["name"] for feature in features]
        self.numeric_names = {f["name"] for f in features if f["kind"] == "numeric"}
        self.classes: list[str] = [str(label) for label in self.metadata["classes"]]
        self.max_batch_rows = int(max_batch_rows or self.metadata["max_batch_rows"])
        if self.max_batch_rows < 1:
            raise SystemExit(f"cannot start: max_batch_rows must be >= 1, not {max_batch_rows}")
        self.model_error_handler = self._request_checks()
        logger.info(
            "loaded %s (sha256 %s), %d features, classes %s, at most %d rows per request",
            self.metadata["estimator"],
            self.metadata["model_sha256"],
            len(self.feature_names),
            self.classes,
            self.max_batch_rows,
        )

    # --- request parsing -------------------------------------------------------------------

    def _request_checks(self) -> Blueprint:
        """Give malformed JSON and a wrong content type a message that says what to send."""
        checks = Blueprint("request_checks", __name__)

        @checks.before_app_request
        def require_json() -> None:
            if request.method != "POST" or request.path not in PREDICTION_PATHS:
                return
            content_type = request.content_type or ""
            # Seldon also accepts multipart forms and a `json` form or query field; leave those be.
            if content_type.startswith("multipart/form-data") or "json" in request.args:
                return
            form = content_type.startswith("application/x-www-form-urlencoded")
            if form and "json" in request.form:
                return
            if not request.is_json:
                raise BadRequest(
                    f"Content-Type must be application/json, got {content_type or 'none'!r}"
                )
            if request.get_json(silent=True) is None:
                try:
                    json.loads(request.get_data())
                except ValueError as error:
                    raise BadRequest(f"the request body is not valid JSON: {error}") from None
                raise BadRequest("the request body is JSON null; send a Seldon message object")

        return checks

    def predict_raw(self, message: Any) -> Any:
        """Reject REST bodies Seldon itself would answer with HTTP 500, then let Seldon go on."""
        if isinstance(message, dict):
            data = message.get("data")
            if isinstance(data, dict):
                self._check_data_shape(data)
        # Seldon falls back to its own parsing and then calls predict() on this signal.
        raise SeldonNotImplementedError("predict_raw only checks the request")

    @staticmethod
    def _check_data_shape(data: dict[str, Any]) -> None:
        """Catch ragged rows and tensors whose shape does not fit their values."""
        rows = data.get("ndarray")
        if isinstance(rows, list) and rows and isinstance(rows[0], list):
            widths = {len(row) if isinstance(row, list) else -1 for row in rows}
            if len(widths) > 1:
                raise BadRequest(
                    "data.ndarray rows have different numbers of values: "
                    f"{sorted(w for w in widths if w >= 0)}; every row needs one value per feature"
                )
        tensor = data.get("tensor")
        if isinstance(tensor, dict):
            shape, values = tensor.get("shape"), tensor.get("values")
            if not (isinstance(shape, list) and isinstance(values, list)):
                raise BadRequest("data.tensor needs a 'shape' list and a 'values' list")
            if math.prod(shape) != len(values):
                raise BadRequest(
                    f"data.tensor shape {shape} needs {math.prod(shape)} values, got {len(values)}"
                )

    def _rows_from_records(self, records: Any) -> tuple[np.ndarray, list[str]]:
        """Turn `jsonData` (a list of {feature: value} objects) into rows in schema order."""
        if not isinstance(records, list):
            raise BadRequest(
                'jsonData must be a list of records like [{"feature": value, ...}], '
                f"got {type(records).__name__}"
            )
        for index, record in enumerate(records):
            if not isinstance(record, dict):
                raise BadRequest(f"jsonData record {index} is not an object")
            if record.keys() != set(self.feature_names):
                self._check_names(list(record), f"jsonData record {index}")
        rows = [[record[name] for name in self.feature_names] for record in records]
        return np.array(rows, dtype=object).reshape(len(rows), len(self.feature_names)), []

    def _check_names(self, names: list[str], where: str) -> None:
        """Raise naming the unknown, missing or repeated feature names."""
        expected = set(self.feature_names)
        unknown = [name for name in names if name not in expected]
        missing = [name for name in self.feature_names if name not in set(names)]
        repeated = sorted({name for name in names if names.count(name) > 1})
        problems = []
        if unknown:
            problems.append(f"unknown feature names {unknown}")
        if missing:
            problems.append(f"missing feature names {missing}")
        if repeated:
            problems.append(f"repeated feature names {repeated}")
        if problems:
            raise BadRequest(
                f"{where}: {'; '.join(problems)}; the model expects {self.feature_names}"
            )

    def to_frame(self, X: Any, names: list[str]) -> pd.DataFrame:
        """Validate a request's rows against the training schema and build the model's input."""
        if isinstance(X, (dict, list)):
            X, names = self._rows_from_records(X)
        if not isinstance(X, np.ndarray):
            raise BadRequest(
                f"expected rows of feature values (data.ndarray, data.tensor or jsonData), "
                f"got {type(X).__name__}"
            )
        if (X.ndim == 1 and X.size == 0) or (X.ndim == 2 and X.shape[0] == 0):
            raise BadRequest("the request has no rows; send at least one row of feature values")
        if X.ndim != 2:
            raise BadRequest(
                f"expected a list of rows (2-D), got {X.ndim}-D data; "
                "wrap a single row in a list: [[v1, v2, ...]]"
            )
        n_rows, n_columns = X.shape
        if n_rows > self.max_batch_rows:
            raise BadRequest(
                f"the request has {n_rows} rows; at most {self.max_batch_rows} are allowed "
                "per request (max_batch_rows): split the batch"
            )
        names = [str(name) for name in names]
        if names:
            if len(names) != n_columns:
                raise BadRequest(
                    f"data.names has {len(names)} names but each row has {n_columns} values"
                )
            self._check_names(names, "data.names")
        elif n_columns != len(self.feature_names):
            raise BadRequest(
                f"each row must have {len(self.feature_names)} values, one per feature in this "
                f"order: {self.feature_names}; got {n_columns}"
            )
        order = names or self.feature_names
        position = {name: index for index, name in enumerate(order)}
        columns = {}
        for name in self.feature_names:
            values = X[:, position[name]]
            if name in self.numeric_names:
                columns[name] = self._numeric(values, name)
            else:
                columns[name] = self._categorical(values)
        # The dict is already in schema order; no reindexing or copying needed.
        return pd.DataFrame(columns, copy=False)

    @staticmethod
    def _numeric(values: np.ndarray, name: str) -> np.ndarray:
        """Cast a column to float (null becomes NaN), or name the first value that is no number."""
        try:
            # One vectorised cast covers numbers, null, and numbers that arrive as text (numpy
            # turns a mixed row like ["Biscoe", 39.1] into strings).
            return values.astype(np.float64)
        except (TypeError, ValueError):
            pass
        for row, value in enumerate(values.tolist()):
            try:
                if value is not None:
                    float(value)
            except (TypeError, ValueError):
                raise BadRequest(
                    f"feature {name!r} must be a number or null, row {row} has {value!r}"
                ) from None
        raise BadRequest(f"feature {name!r} must hold numbers or null")

    @staticmethod
    def _categorical(values: np.ndarray) -> np.ndarray:
        """Categories as text, NaN for missing: what the pipeline saw at training time."""
        if values.dtype.kind == "U":
            return values.astype(object)
        return np.array(
            [np.nan if is_missing(value) else str(value) for value in values.tolist()],
            dtype=object,
        )

    # --- the Seldon component API -----------------------------------------------------------

    def predict(self, X: Any, features_names: Any, meta: dict | None = None) -> SeldonResponse:
        """Class probabilities, one row per request row, columns in `class_names()` order.

        They come with the request's per-class prediction counts as Seldon runtime metrics
        (`predictions_total{class=...}` on the metrics port). Returned here rather than from a
        `metrics()` method: the counts belong to this request, and Seldon then makes one update
        to its cross-worker metrics store per request instead of two; each update is several
        round trips to a separate process (docs/benchmarks.md, "CPU per request").
        """
        frame = self.to_frame(X, list(features_names or []))
        probabilities = self.model.predict_proba(frame)
        return SeldonResponse(probabilities, None, self.prediction_counts(probabilities))

    def prediction_counts(self, probabilities: np.ndarray) -> list[dict[str, Any]]:
        """Prometheus counters: how many rows were predicted as each class."""
        predicted = np.asarray(self.classes)[probabilities.argmax(axis=1)]
        counts = Counter(predicted.tolist())
        return [
            {"type": "COUNTER", "key": "predictions_total", "value": n, "tags": {"class": label}}
            for label, n in sorted(counts.items())
        ]

    def class_names(self) -> list[str]:
        """The training labels, in the order of the probability columns."""
        return self.classes

    def tags(self) -> dict[str, str]:
        """Added to every response's meta.tags, so each answer names the model that gave it."""
        return {
            "model_sha256": self.metadata["model_sha256"],
            "git_commit": str(self.metadata.get("git_commit", "")),
        }

    def health_status(self) -> dict[str, Any]:
        """Predict one all-missing row, so a broken model or library fails the readiness probe."""
        probe = pd.DataFrame(
            {
                name: [np.nan] if name in self.numeric_names else np.array([np.nan], dtype=object)
                for name in self.feature_names
            },
            columns=self.feature_names,
        )
        probabilities = self.model.predict_proba(probe)
        return {
            "status": "ok",
            "model_sha256": self.metadata["model_sha256"],
            "classes": self.classes,
            "probe_sum": round(float(probabilities.sum()), 6),
        }

    def init_metadata(self) -> dict[str, Any]:
        """What `/metadata` answers: the inputs by name and kind, the outputs by class."""
        properties = {
            feature["name"]: (
                {"type": ["number", "null"]}
                if feature["kind"] == "numeric"
                else {"type": ["string", "null"], "examples": feature.get("categories", [])}
            )
            for feature in self.metadata["features"]
        }
        return {
            "name": str(self.metadata.get("target", "model")),
            "versions": [self.metadata["model_sha256"][:12]],
            "platform": "seldon",
            "inputs": [
                {
                    "messagetype": "ndarray",
                    "schema": {"names": self.feature_names, "shape": [len(self.feature_names)]},
                },
                {
                    "messagetype": "jsonData",
                    "schema": {
                        "type": "array",
                        "maxItems": self.max_batch_rows,
                        "items": {
                            "type": "object",
                            "properties": properties,
                            "required": self.feature_names,
                        },
                    },
                },
            ],
            "outputs": [
                {
                    "messagetype": "ndarray",
                    "schema": {"names": self.classes, "shape": [len(self.classes)]},
                }
            ],
            "custom": {
                "estimator": str(self.metadata["estimator"]),
                "target": str(self.metadata["target"]),
                "model_sha256": self.metadata["model_sha256"],
                "git_commit": str(self.metadata.get("git_commit", "")),
                "max_batch_rows": str(self.max_batch_rows),
                "scikit_learn": str(self.metadata["versions"]["scikit-learn"]),
            },
        }
