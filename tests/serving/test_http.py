"""HTTP on the prediction routes beyond the message: CORS preflights and wrong methods.

Against the real microservice.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from tests.serving.conftest import Server

pytestmark = pytest.mark.slow

PREDICTION_PATHS = ["/api/v1.0/predictions", "/api/v0.1/predictions", "/predict"]


def send(
    url: str, method: str, headers: dict[str, str], body: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one request."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


@pytest.mark.parametrize("path", [*PREDICTION_PATHS, "/api/v1.0/feedback"])
def test_a_browser_preflight_is_answered_with_cors_headers(server: Server, path: str) -> None:
    status, headers, body = send(
        f"{server.url}{path}",
        "OPTIONS",
        {
            "Origin": "https://dashboard.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "Content-Type",
        },
    )
    assert status in (200, 204), body
    assert headers.get("Access-Control-Allow-Origin") in ("*", "https://dashboard.example")
    assert "POST" in headers.get("Access-Control-Allow-Methods", ""), headers
    assert "content-type" in headers.get("Access-Control-Allow-Headers", "").lower(), headers


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize(
    "path", ["/api/v1.0/predictions", "/api/v0.1/predictions", "/api/v1.0/feedback"]
)
def test_reading_a_prediction_route_is_405_with_allow(
    server: Server, path: str, method: str
) -> None:
    status, headers, body = send(f"{server.url}{path}", method, {})
    assert status == 405, body
    assert "POST" in [allowed.strip() for allowed in headers.get("Allow", "").split(",")]
    if method == "GET":
        answer = json.loads(body)
        assert answer["status"]["code"] == -1
        assert answer["status"]["reason"] == "METHOD_NOT_ALLOWED"
        assert f"{method} is not allowed on {path}" in answer["status"]["info"]
