"""A real Prometheus scrapes the real microservice while the Locust scenario loads it.

Prometheus runs with the configuration `make monitor` writes (scraping every second here), in a
process group of its own, on 127.0.0.1; the load test is `mlops load-test`, bounded to a few
users for about 20 seconds. Afterwards every dashboard panel's query returns data, the request
counters agree with what Locust sent, and no good request failed.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlops_template import monitoring
from mlops_template.params import load_params, monitoring_params
from tests.serving.conftest import REPO, Server, load_test, scraped

pytestmark = pytest.mark.slow

LOAD_SECONDS = 20
LIMITS = monitoring_params(load_params(REPO / "params.yaml"))


def ask(base: str, path: str, **query: str) -> dict:
    """One Prometheus HTTP API call."""
    url = f"{base}{path}?{urllib.parse.urlencode(query)}" if query else f"{base}{path}"
    with urllib.request.urlopen(url, timeout=10) as response:
        answer = json.load(response)
    assert answer["status"] == "success", answer
    return answer["data"]


def scalar(base: str, expr: str) -> float | None:
    """The single value of an instant query (None if there is no series)."""
    result = ask(base, "/api/v1/query", query=expr)["result"]
    return float(result[0]["value"][1]) if result else None


@pytest.fixture
def watched(serving_package: Path, tmp_path: Path) -> Iterator[tuple[Server, str]]:
    """A fresh server (counters from zero) and a Prometheus scraping it every second."""
    with scraped(serving_package, tmp_path) as watched_server:
        yield watched_server


def test_prometheus_sees_the_load_test_on_every_panel(
    watched: tuple[Server, str], serving_package: Path, tmp_path: Path
) -> None:
    server, base = watched
    deadline = time.monotonic() + 30
    while scalar(base, 'up{job="model"}') != 1:  # the first scrape
        assert time.monotonic() < deadline, "Prometheus never scraped the model server"
        time.sleep(0.5)
    rules = ask(base, "/api/v1/rules")["groups"]
    assert {rule["name"] for group in rules for rule in group["rules"]} == {
        alert.name for alert in monitoring.alerts(LIMITS)
    }

    out = tmp_path / "load"
    done = load_test(server.url, serving_package, REPO / "params.yaml", LOAD_SECONDS, out)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(Path(f"{out}_summary.json").read_text())
    sent, bad = summary["requests"], summary["bad"]
    assert (summary["good_failed"], summary["bad_not_400"], summary["problems"]) == (0, 0, [])
    assert sent > 100
    assert bad > 0
    assert Path(f"{out}.html").stat().st_size > 0

    # Every request Locust completed, in the server's counters (once the last scrape is in).
    deadline = time.monotonic() + 20
    while scalar(base, "sum(model_requests_total)") != sent:
        assert time.monotonic() < deadline, (scalar(base, "sum(model_requests_total)"), sent)
        time.sleep(0.5)
    assert scalar(base, 'sum(model_requests_total{code="4xx"})') == bad
    assert scalar(base, 'sum(model_requests_total{code="5xx"})') == 0
    assert scalar(base, "sum(model_request_rows_count)") == sent - bad

    for panel in monitoring.PANELS:
        for query in panel.queries():
            result = ask(base, "/api/v1/query", query=query)["result"]
            assert result, f"{panel.title}: no data for {query}"
