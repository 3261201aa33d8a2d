"""HTTP on the prediction routes beyond the message: CORS preflights, wrong methods, short bodies.

Against the real microservice; a body is sent both to the fast path (`Model.FastPredictions`) and,
with a query string, through Seldon's Flask app.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from http.client import HTTPResponse
from pathlib import Path

import pytest

from tests.serving.checks import BAD_DATA, check_still_serves, raw_rows
from tests.serving.conftest import Server

pytestmark = pytest.mark.slow

PREDICTION_PATHS = ["/api/v1.0/predictions", "/api/v0.1/predictions", "/predict"]
# The fast path, and Seldon's app (a query string sends a request there).
BOTH_PATHS = ["/api/v1.0/predictions", "/api/v1.0/predictions?through=seldon"]


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


def raw_request(port: int, path: str, body: bytes, content_length: int) -> tuple[int, bytes]:
    """POST `body` announcing `content_length` bytes, then end the sending side; the answer."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {content_length}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head + body)
        sock.shutdown(socket.SHUT_WR)
        response = HTTPResponse(sock)
        response.begin()
        return response.status, response.read()


@pytest.mark.parametrize("path", BOTH_PATHS)
def test_a_body_shorter_than_its_content_length_is_400(
    server: Server, serving_package: Path, path: str
) -> None:
    """A complete JSON message, sent as the start of a longer body, is not predicted on."""
    body = json.dumps({"data": {"ndarray": raw_rows(serving_package, 1, seed=2)}}).encode()
    status, payload = raw_request(server.http_port, path, body, len(body) + 40)
    answer = json.loads(payload)
    assert status == 400, answer
    assert answer["status"]["reason"] == BAD_DATA
    assert answer["status"]["info"].startswith(
        f"the request body has {len(body)} bytes, Content-Length says {len(body) + 40}"
    )
    check_still_serves(server.url, serving_package)


@pytest.mark.parametrize("path", BOTH_PATHS)
def test_a_body_of_its_content_length_is_answered(
    server: Server, serving_package: Path, path: str
) -> None:
    body = json.dumps({"data": {"ndarray": raw_rows(serving_package, 1, seed=2)}}).encode()
    status, payload = raw_request(server.http_port, path, body, len(body))
    assert status == 200, payload
