"""The ONNX and the joblib package of one model answer every request the same, through the real
microservice: the same probabilities (to 1e-12), classes, names and shapes for good requests in
every Seldon form, and the same status and message for every bad one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.serving.checks import (
    BAD_REQUEST_CASES,
    bad_requests,
    metadata_of,
    probabilities_of,
    raw_rows,
)
from tests.serving.conftest import Server, http, predict


def answer_pair(onnx: Server, joblib: Server, message: Any) -> tuple[dict, dict]:
    """The two servers' answers to one request; both must be 200."""
    (onnx_status, onnx_answer), (joblib_status, joblib_answer) = (
        predict(server.url, message) for server in (onnx, joblib)
    )
    assert (onnx_status, joblib_status) == (200, 200), (onnx_answer, joblib_answer)
    return onnx_answer, joblib_answer


def test_the_packages_differ_only_in_runtime(serving_package: Path, joblib_package: Path) -> None:
    onnx, joblib = metadata_of(serving_package), metadata_of(joblib_package)
    assert (onnx.runtime, joblib.runtime) == ("onnx", "joblib")
    assert onnx.model_sha256 == joblib.model_sha256
    assert (serving_package / "model.onnx").is_file()
    assert not (joblib_package / "model.onnx").exists()
    # What each image installs: no scikit-learn or SciPy with ONNX, no onnxruntime with joblib.
    onnx_requirements = (serving_package / "requirements.txt").read_text()
    joblib_requirements = (joblib_package / "requirements.txt").read_text()
    for package in ("scikit-learn==", "scipy==", "joblib=="):
        assert f"\n{package}" not in onnx_requirements
        assert f"\n{package}" in joblib_requirements
    assert "\nonnxruntime==" in onnx_requirements
    assert "\nonnxruntime==" not in joblib_requirements
    for package in ("seldon-core==", "numpy==", "prometheus-client=="):
        assert f"\n{package}" in onnx_requirements
        assert f"\n{package}" in joblib_requirements


@pytest.mark.parametrize("form", ["ndarray", "jsonData", "tensor"])
def test_same_probabilities_in_every_form(
    server: Server, joblib_server: Server, serving_package: Path, form: str
) -> None:
    metadata = metadata_of(serving_package)
    rows = raw_rows(serving_package, 1000, seed=3)
    if form == "ndarray":
        message: Any = {"data": {"names": metadata.feature_names, "ndarray": rows}}
    elif form == "jsonData":
        message = {
            "jsonData": [dict(zip(metadata.feature_names, row, strict=True)) for row in rows]
        }
    else:
        numeric = metadata.numeric_names
        positions = [metadata.feature_names.index(name) for name in numeric]
        values = [row[i] if row[i] is not None else 0.0 for row in rows[:50] for i in positions]
        message = {"data": {"names": numeric, "tensor": {"shape": [50, len(numeric)],
                                                         "values": values}}}  # fmt: skip
        # A tensor carries numbers only, so the categorical features are absent: both refuse
        # it alike, or both answer.
    onnx_status, onnx_answer = predict(server.url, message)
    joblib_status, joblib_answer = predict(joblib_server.url, message)
    assert onnx_status == joblib_status, (onnx_answer, joblib_answer)
    if onnx_status != 200:
        assert onnx_answer["status"] == joblib_answer["status"]
        return
    assert onnx_answer["data"]["names"] == joblib_answer["data"]["names"]
    onnx_values, joblib_values = probabilities_of(onnx_answer), probabilities_of(joblib_answer)
    np.testing.assert_allclose(onnx_values, joblib_values, rtol=0, atol=1e-12)
    assert (onnx_values.argmax(axis=1) == joblib_values.argmax(axis=1)).all()
    assert onnx_answer["meta"]["tags"]["runtime"] == "onnx"
    assert joblib_answer["meta"]["tags"]["runtime"] == "joblib"


def test_same_probabilities_at_the_edges(
    server: Server, joblib_server: Server, serving_package: Path
) -> None:
    """Missing values in each feature, all missing, unseen and empty levels, far-out numbers."""
    metadata = metadata_of(serving_package)
    base = raw_rows(serving_package, 1, seed=11)[0]
    rows = [[None] * len(base)]
    for position, feature in enumerate(metadata.features):
        rows.append([None if i == position else value for i, value in enumerate(base)])
        if feature.kind == "categorical":
            for level in ("never seen", "", 3):
                rows.append([level if i == position else value for i, value in enumerate(base)])
        else:
            for value in (-1e12, 1e12, 0, 1e-300):
                rows.append([value if i == position else old for i, old in enumerate(base)])
    onnx_answer, joblib_answer = answer_pair(server, joblib_server, {"data": {"ndarray": rows}})
    np.testing.assert_allclose(
        np.asarray(onnx_answer["data"]["ndarray"]),
        np.asarray(joblib_answer["data"]["ndarray"]),
        rtol=0,
        atol=1e-12,
    )


@pytest.mark.parametrize("case", BAD_REQUEST_CASES)
def test_same_answer_to_every_bad_request(
    server: Server, joblib_server: Server, serving_package: Path, case: str
) -> None:
    body, content_type, _ = bad_requests(serving_package)[case]
    answers = [
        http("POST", f"{target.url}/api/v1.0/predictions", body, content_type)
        for target in (server, joblib_server)
    ]
    (onnx_status, onnx_answer), (joblib_status, joblib_answer) = answers
    assert onnx_status == joblib_status == 400, answers
    assert onnx_answer == joblib_answer


def test_health_and_metadata_name_the_runtime(server: Server, joblib_server: Server) -> None:
    for target, runtime in ((server, "onnx"), (joblib_server, "joblib")):
        status, answer = http("GET", f"{target.url}/api/v1.0/metadata")
        assert status == 200, answer
        assert answer["custom"]["runtime"] == runtime
        status, health = http("GET", f"{target.url}/health/status")
        assert status == 200
        assert json.dumps(health).count("probe_sum") == 1
