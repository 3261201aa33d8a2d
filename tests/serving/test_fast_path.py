"""The fast path answers plain JSON prediction requests exactly as Seldon's Flask app does.

`Model.FastPredictions` answers a POST of a JSON body to a predictions route itself; a query
string sends the same request through Seldon's app instead. For a good request and every
bad-request case, both answers must be the same bytes with the same status and headers, and the
request metrics must count both.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.serving.checks import BAD_REQUEST_CASES, bad_requests, raw_rows
from tests.serving.conftest import Server

HEADERS = ("Content-Type", "Content-Length", "Access-Control-Allow-Origin")


def raw(url: str, body: bytes, content_type: str) -> tuple[int, dict[str, str], bytes]:
    """Status, the headers that matter, and the body bytes of one POST."""
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, headers, payload = response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        status, headers, payload = error.code, error.headers, error.read()
    return status, {name: headers.get(name) for name in HEADERS}, payload


def both(server: Server, body: bytes, content_type: str = "application/json"):
    """The fast path's answer and Seldon's app's answer to the same request."""
    url = f"{server.url}/api/v1.0/predictions"
    return raw(url, body, content_type), raw(f"{url}?through=seldon", body, content_type)


@pytest.mark.parametrize("rows", [1, 2, 1000])
def test_good_requests_are_answered_byte_for_byte_alike(
    server: Server, serving_package: Path, rows: int
) -> None:
    import json

    body = json.dumps({"data": {"ndarray": raw_rows(serving_package, rows, seed=5)}}).encode()
    fast, seldon = both(server, body)
    assert fast[0] == 200
    assert fast == seldon


@pytest.mark.parametrize("case", BAD_REQUEST_CASES)
def test_bad_requests_are_answered_byte_for_byte_alike(
    server: Server, serving_package: Path, case: str
) -> None:
    body, content_type, _ = bad_requests(serving_package)[case]
    fast, seldon = both(server, body, content_type)
    assert fast[0] in (400, 413)
    assert fast == seldon
