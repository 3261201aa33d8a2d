"""What every served model must do, shared by the local-server tests and the image test."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from mlops_template.serving.contract import MODEL_FILE, PackageMetadata
from tests.serving.conftest import REPO, http, predict

BAD_DATA = "MICROSERVICE_BAD_DATA"


def metadata_of(package_dir: Path) -> PackageMetadata:
    """The package's validated metadata."""
    return PackageMetadata.read(package_dir)


@cache
def _model(model_path: Path) -> Any:
    import joblib

    return joblib.load(model_path)


def expected_probabilities(package_dir: Path, rows: list[list[Any]]) -> np.ndarray:
    """In-process `predict_proba` on rows in schema order, typed the way the pipeline reads data."""
    import pandas as pd

    from mlops_template.dataset import coerce_features

    metadata = metadata_of(package_dir)
    frame = pd.DataFrame(rows, columns=metadata.feature_names)
    schema = {"features": [feature.to_dict() for feature in metadata.features]}
    return _model(package_dir / MODEL_FILE).predict_proba(coerce_features(frame, schema))


def raw_rows(package_dir: Path, count: int, seed: int = 0) -> list[list[Any]]:
    """`count` rows of the raw data (missing values included) as JSON-ready lists."""
    import pandas as pd

    names = metadata_of(package_dir).feature_names
    frame = pd.read_csv(REPO / "data" / "raw" / "penguins.csv")[names]
    sample = frame.sample(n=count, replace=count > len(frame), random_state=seed)
    return [
        [None if pd.isna(value) else value for value in row]
        for row in sample.astype(object).itertuples(index=False)
    ]


def probabilities_of(answer: dict[str, Any]) -> np.ndarray:
    """The probability matrix of a Seldon answer, whether it came as ndarray or tensor."""
    data = answer["data"]
    if "ndarray" in data:
        return np.asarray(data["ndarray"], dtype=float)
    tensor = data["tensor"]
    return np.asarray(tensor["values"], dtype=float).reshape(tensor["shape"])


def assert_answer(package_dir: Path, answer: dict[str, Any], rows: list[list[Any]]) -> None:
    """The served probabilities equal in-process ones, with the training labels as names."""
    metadata = metadata_of(package_dir)
    assert answer["data"]["names"] == list(metadata.classes)
    np.testing.assert_allclose(
        probabilities_of(answer), expected_probabilities(package_dir, rows), rtol=0, atol=1e-12
    )
    assert answer["meta"]["tags"]["model_sha256"] == metadata.model_sha256


BAD_REQUEST_CASES = [
    "too few columns",
    "too many columns",
    "unknown name",
    "missing name",
    "repeated name",
    "names and values disagree",
    "non-numeric value",
    "empty batch",
    "empty jsonData",
    "too large batch",
    "rows of different lengths",
    "a single row not in a list",
    "tensor shape does not fit",
    "jsonData not records",
    "jsonData record missing a field",
    "a list where a number is expected",
    "an object where text is expected",
    "a boolean where a number is expected",
    "a number too large for the model",
    "meta not an object",
    "malformed JSON",
    "Infinity",
    "NaN",
    "1e309",
    "deeply nested JSON",
    "wrong content type",
    "form-encoded (curl -d without -H)",
    "malformed JSON in the json form field",
]


def bad_requests(package_dir: Path) -> dict[str, tuple[bytes, str, str]]:
    """case -> (body, content type, pattern the message must match) for every rejected request."""
    metadata = metadata_of(package_dir)
    names = metadata.feature_names
    n, first, last = len(names), names[0], names[-1]
    numeric = metadata.numeric_names[0]
    row = raw_rows(package_dir, 1, seed=1)[0]
    pairs = list(zip(names, row, strict=True))
    text_row = [value if name != numeric else "not a number" for name, value in pairs]
    too_many = metadata.max_batch_rows + 1
    record = {name: value for name, value in pairs if name != last}
    categorical = next(f.name for f in metadata.features if f.kind == "categorical")

    def with_value(name: str, value: Any) -> list[Any]:
        return [value if feature == name else old for feature, old in pairs]

    cases: list[tuple[str, Any, str]] = [
        ("too few columns", {"data": {"ndarray": [row[:-1]]}},
         rf"each row must have {n} values.*got {n - 1}"),
        ("too many columns", {"data": {"ndarray": [[*row, 1.0]]}},
         rf"each row must have {n} values.*got {n + 1}"),
        ("unknown name", {"data": {"names": [*names[:-1], "colour"], "ndarray": [row]}},
         rf"unknown feature names \['colour'\]; missing feature names \['{last}'\]"),
        ("missing name", {"data": {"names": names[:-1], "ndarray": [row[:-1]]}},
         rf"missing feature names \['{last}'\]"),
        ("repeated name", {"data": {"names": [*names[:-1], first], "ndarray": [row]}},
         rf"repeated feature names \['{first}'\]"),
        ("names and values disagree", {"data": {"names": names, "ndarray": [row[:-1]]}},
         rf"data.names has {n} names but each row has {n - 1}"),
        ("non-numeric value", {"data": {"ndarray": [row, text_row]}},
         rf"feature '{numeric}' must be a number or null, row 1 has 'not a number'"),
        ("empty batch", {"data": {"ndarray": []}}, r"the request has no rows"),
        ("empty jsonData", {"jsonData": []}, r"the request has no rows"),
        ("too large batch", {"data": {"ndarray": [row] * too_many}},
         rf"has {too_many} rows; at most {too_many - 1} are allowed"),
        ("rows of different lengths", {"data": {"ndarray": [row, row[:-1]]}},
         r"rows have different numbers of values"),
        ("a single row not in a list", {"data": {"ndarray": row}},
         r"expected a list of rows \(2-D\), got 1-D"),
        ("tensor shape does not fit", {"data": {"tensor": {"shape": [1, n], "values": [1.0]}}},
         rf"shape \[1, {n}\] needs {n} values, got 1"),
        ("jsonData not records", {"jsonData": {first: row[0]}},
         r"jsonData must be a list of records"),
        ("jsonData record missing a field", {"jsonData": [record]},
         rf"jsonData record 0: missing feature names \['{last}'\]"),
        ("a list where a number is expected",
         {"data": {"ndarray": [row, with_value(numeric, [1])]}},
         rf"feature '{numeric}' must be a number or null, row 1 has \[1\]"),
        ("an object where text is expected", {"data": {"ndarray": [with_value(categorical, {})]}},
         rf"feature '{categorical}' must be text, a number or null, row 0 has an object"),
        ("a boolean where a number is expected",
         {"jsonData": [dict(zip(names, with_value(numeric, True), strict=True))]},
         rf"feature '{numeric}' must be a number or null, row 0 has True"),
        ("a number too large for the model", {"data": {"ndarray": [with_value(numeric, 1e300)]}},
         rf"feature '{numeric}' row 0 has 1e\+300, too far outside the training data's scale"),
        ("meta not an object", {"meta": [], "data": {"ndarray": [row]}},
         r"meta must be an object, got a list"),
    ]  # fmt: skip
    json_type = "application/json"
    good = json.dumps({"data": {"ndarray": [row]}}).encode()
    requests = {
        case: (json.dumps(body).encode(), json_type, pattern) for case, body, pattern in cases
    }
    requests["malformed JSON"] = (
        b'{"data": {"ndarray": [[1, 2}}',
        json_type,
        r"the request body is not valid JSON: Expecting",
    )
    for literal in ("Infinity", "NaN", "1e309"):
        body = json.dumps({"data": {"ndarray": [with_value(numeric, 0.5)]}})
        requests[literal] = (
            body.replace("0.5", literal).encode(),
            json_type,
            r"is not a JSON number; send null" if literal != "1e309" else r"too large for a 64-bit",
        )
    requests["deeply nested JSON"] = (
        b"[" * 100_000 + b"]" * 100_000,
        json_type,
        r"the request body is nested too deeply",
    )
    requests["wrong content type"] = (
        good,
        "text/plain",
        r"Content-Type must be application/json, got 'text/plain'",
    )
    requests["form-encoded (curl -d without -H)"] = (
        good,
        "application/x-www-form-urlencoded",
        r"Content-Type must be application/json",
    )
    requests["malformed JSON in the json form field"] = (
        b"json=%7B%22data%22%3A",  # json={"data":
        "application/x-www-form-urlencoded",
        r"the request body is not valid JSON: Expecting value",
    )
    assert list(requests) == BAD_REQUEST_CASES
    return requests


def check_bad_request(base_url: str, body: bytes, content_type: str, pattern: str) -> None:
    """The request gets HTTP 400 MICROSERVICE_BAD_DATA with a message matching `pattern`."""
    import re

    status, answer = http("POST", f"{base_url}/api/v1.0/predictions", body, content_type)
    assert status == 400, answer
    assert answer["status"]["reason"] == BAD_DATA, answer
    assert re.search(pattern, answer["status"]["info"]), answer["status"]["info"]


def check_still_serves(base_url: str, package_dir: Path) -> None:
    """A good request right after a bad one is answered correctly."""
    rows = raw_rows(package_dir, 2, seed=7)
    status, answer = predict(base_url, {"data": {"ndarray": rows}})
    assert status == 200, answer
    assert_answer(package_dir, answer, rows)
