"""Property: whatever a client sends, the real microservice never answers 5xx, and keeps serving.

Hypothesis generates request bodies of every shape (any JSON value in any cell, wrong nesting,
missing and extra keys, huge and non-finite numbers, very long strings, many rows, bodies that are
not JSON at all) and sends each to the running server. Every answer must be below 500; every 200
must hold one row of probabilities per request row, each summing to 1; every other answer must
say what is wrong in Seldon's error format; and a good request right after must still get 200.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.serving.checks import metadata_of, probabilities_of, raw_rows
from tests.serving.conftest import MAX_BATCH_ROWS, Server, http, predict

pytestmark = pytest.mark.slow

# Enough cases to reach every branch of the request parsing many times over, in about a minute.
EXAMPLES = 1000
# Generated bodies stay under the server's size limit (413 has its own test): a body the server
# refuses unread can reset the connection while the client is still sending it.
MAX_BODY_BYTES = 1_000_000
PREDICTION_PATHS = ["/api/v1.0/predictions", "/api/v0.1/predictions", "/predict"]
# Every other route Seldon serves, and some it does not.
OTHER_PATHS = [
    "/api/v1.0/feedback", "/transform-input", "/transform-output", "/route", "/aggregate",
    "/metadata", "/health/status", "/", "/api/v1.0/nothing",
]  # fmt: skip

finite = st.floats(allow_nan=False, allow_infinity=False)
numbers = st.one_of(
    st.integers(min_value=-(10**20), max_value=10**20),
    finite,
    st.sampled_from([1e308, -1e308, 3.5e38, 1e300, 5e-324, 0.0, -0.0]),
    st.floats(allow_nan=True, allow_infinity=True),  # NaN and Infinity literals in the body
    st.integers(min_value=10**300, max_value=10**330),  # beyond a float
)
long_text = st.integers(min_value=100, max_value=50_000).map(lambda n: "x" * n)
scalars = st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=20), long_text)
any_json = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
Features = list[tuple[str, str, list[str]]]


def one_in(draw: st.DrawFn, n: int) -> bool:
    """True about once in `n` draws: how often a generated request goes wrong somewhere."""
    return draw(st.integers(0, n - 1)) == 0


def plausible_cell(kind: str, categories: list[str]) -> st.SearchStrategy[Any]:
    """A value a real client would send for a feature of this kind."""
    if kind == "numeric":
        return st.one_of(
            st.none(), st.floats(-1e6, 1e6), st.integers(-1000, 10_000), st.just("42.5")
        )
    return st.one_of(st.none(), st.sampled_from(categories or ["x"]), st.text(max_size=10))


@st.composite
def rows(draw: st.DrawFn, features: Features) -> list[Any]:
    """A batch of plausible rows, often one thing wrong in it, sometimes many rows."""
    batch: list[Any] = [
        [draw(plausible_cell(kind, categories)) for _, kind, categories in features]
        for _ in range(draw(st.integers(1, 4)))
    ]
    if one_in(draw, 3):  # one thing wrong: a cell, a row's length, or a row itself
        index = draw(st.integers(0, len(batch) - 1))
        wrong = draw(st.sampled_from(["cell", "cell", "shorter", "longer", "row"]))
        if wrong == "cell":
            batch[index][draw(st.integers(0, len(features) - 1))] = draw(any_json)
        elif wrong == "shorter":
            batch[index].pop()
        elif wrong == "longer":
            batch[index].append(draw(any_json))
        else:
            batch[index] = draw(any_json)
    if one_in(draw, 3):  # many rows, up to beyond the batch limit
        size = len(json.dumps(batch, allow_nan=True))
        most = min(MAX_BATCH_ROWS // len(batch) + 2, max(1, MAX_BODY_BYTES // size))
        batch = batch * draw(st.integers(1, most))
    if one_in(draw, 20):
        batch = []
    return batch


@st.composite
def message(draw: st.DrawFn, features: Features) -> Any:
    """A Seldon message in one of its forms, or a near miss, or any JSON value."""
    names = [name for name, _, _ in features]
    form = draw(st.sampled_from(["ndarray"] * 3 + ["names"] * 2 + ["tensor", "jsonData"] * 2))
    if one_in(draw, 10):
        return draw(any_json)
    batch = draw(rows(features))
    if form == "ndarray":
        body: dict[str, Any] = {"data": {"ndarray": batch}}
    elif form == "names":
        order = draw(st.permutations(names))
        if one_in(draw, 5):
            order = draw(st.lists(st.one_of(st.sampled_from(names), st.text(max_size=6))))
        position = {name: index for index, name in enumerate(names)}
        by_name = [
            [r[position[n]] if position.get(n, len(r)) < len(r) else None for n in order]
            if isinstance(r, list) else r
            for r in batch
        ]  # fmt: skip
        body = {"data": {"names": order, "ndarray": by_name}}
    elif form == "tensor":
        width = len(names)
        values = [
            draw(st.one_of(st.floats(-1e6, 1e6), st.none())) for _ in range(width * len(batch))
        ]
        shape: Any = [len(batch), width]
        if one_in(draw, 3):
            shape = draw(st.lists(st.one_of(st.integers(-2, 40), any_json), max_size=3))
        if one_in(draw, 4):
            values.append(draw(any_json))
        body = {"data": {"tensor": {"shape": shape, "values": values}}}
    else:
        records = [dict(zip(names, r, strict=False)) if isinstance(r, list) else r for r in batch]
        if records and isinstance(records[0], dict) and one_in(draw, 4):
            records[0][draw(st.text(max_size=6))] = draw(any_json)
        body = {"jsonData": records}
    if one_in(draw, 4):  # missing, extra and wrong-typed keys around the rows
        for key in draw(st.lists(st.sampled_from(["meta", "data", "jsonData", "x"]), min_size=1)):
            body[key] = draw(any_json)
    elif one_in(draw, 4):
        body["meta"] = {"puid": "abc", "tags": {"source": "test"}}
    return body


@st.composite
def request(draw: st.DrawFn, features: Features) -> tuple[str, ...]:
    """(method, path, content type, body): mostly JSON messages, sometimes anything."""
    kind = draw(st.sampled_from(["message"] * 6 + ["deep", "broken", "bytes", "elsewhere"]))
    method, path, content_type = "POST", draw(st.sampled_from(PREDICTION_PATHS)), "application/json"
    if kind == "message":
        body = json.dumps(draw(message(features)), allow_nan=True).encode()
    elif kind == "deep":
        depth = draw(st.integers(100, 200_000))
        body = (draw(st.sampled_from(["[", '{"a":'])) * depth).encode()
        body += (b"]" if body.startswith(b"[") else b"}") * depth
    elif kind == "broken":
        text = json.dumps(draw(message(features)), allow_nan=True)
        body = text[: draw(st.integers(0, len(text)))].encode()
    elif kind == "bytes":
        body = draw(st.binary(max_size=200))
        content_type = draw(st.sampled_from(["application/json", "text/plain", ""]))
    else:
        method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE"]))
        path = draw(st.sampled_from([*PREDICTION_PATHS, *OTHER_PATHS]))
        body = json.dumps(draw(st.one_of(any_json, message(features))), allow_nan=True).encode()
    return method, path, content_type, body


def expected_rows(body: bytes) -> int | None:
    """Rows a 200 answer must have, from the request as sent (None: not a valid message)."""
    try:
        message = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(message, dict):
        return None
    if "jsonData" in message and isinstance(message["jsonData"], list):
        return len(message["jsonData"])
    data = message.get("data")
    if isinstance(data, dict) and isinstance(data.get("ndarray"), list):
        return len(data["ndarray"])
    if isinstance(data, dict) and isinstance(data.get("tensor"), dict):
        shape = data["tensor"].get("shape")
        return shape[0] if isinstance(shape, list) and shape else None
    return None


@pytest.fixture(scope="module")
def features(serving_package: Path) -> Features:
    """(name, kind, categories) of each feature the served model takes."""
    return [(f.name, f.kind, list(f.categories)) for f in metadata_of(serving_package).features]


def test_no_request_gets_a_5xx_answer(
    server: Server, serving_package: Path, features: Features
) -> None:
    good = {"data": {"ndarray": raw_rows(serving_package, 1, seed=21)}}

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(request(features))
    def check(sent: tuple[str, str, str, bytes]) -> None:
        method, path, content_type, body = sent
        status, answer = send(server, method, path, content_type, body)
        assert status < 500, (status, answer, body[:300])
        if status == 200 and path in PREDICTION_PATHS and method == "POST":
            probabilities = probabilities_of(answer)
            assert probabilities.shape[0] == expected_rows(body), (answer, body[:300])
            assert np.allclose(probabilities.sum(axis=1), 1.0), answer
        elif status != 200:
            assert isinstance(answer, dict), (status, answer)
            assert answer["status"]["info"], (status, answer)
        after, answer = predict(server.url, good)
        assert after == 200, ("a good request failed after", body[:300], answer)

    check()


def send(server: Server, method: str, path: str, content_type: str, body: bytes) -> tuple[int, Any]:
    """One request; a GET or DELETE carries no body."""
    if method in ("GET", "DELETE"):
        return http(method, f"{server.url}{path}")
    return http(method, f"{server.url}{path}", body, content_type)
