"""`mlops load-test` against the real microservice: the latency limit from params.yaml holds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.serving.conftest import REPO, Server, load_test

pytestmark = pytest.mark.slow

SECONDS = 4


def test_good_requests_slower_than_the_p95_limit_fail_the_load_test(
    server: Server, serving_package: Path, tmp_path: Path
) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["load_test"]["p95_latency_ms"] = 0.5  # no HTTP round trip through a model is this fast
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = tmp_path / "load"
    done = load_test(server.url, serving_package, tmp_path / "params.yaml", SECONDS, out)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads(Path(f"{out}_summary.json").read_text())
    # Every request was answered as it should be: the latency alone fails the run.
    assert summary["good"] > 0
    assert (summary["good_failed"], summary["bad_not_400"]) == (0, 0)
    assert summary["good_p95_ms"] >= 1
    assert summary["problems"] == [
        f"good requests' p95 latency {summary['good_p95_ms']:.0f} ms is over 0.5 ms"
    ]
    assert "load test failed: good requests' p95 latency" in done.stderr
