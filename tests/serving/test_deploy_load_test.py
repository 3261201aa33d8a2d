"""`mlops deploy --load-test`: after the smoke request, Locust through a port-forward.

The cluster is the kubectl stand-in of tests/test_deploy.py; its `port-forward` forwards to the
real microservice on loopback, standing in for the predictor's Service.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.serving.conftest import REPO, Server, free_port
from tests.test_deploy import Cluster

pytestmark = pytest.mark.slow

SECONDS = 5


def deploy_with_load_test(cluster: Cluster, serving_package: Path, forward_to: str):
    """Run `mlops deploy --load-test` in a work directory laid out like the repository."""
    root = cluster.root
    (root / "loadtest").symlink_to(REPO / "loadtest")
    (root / "data").mkdir()
    (root / "data" / "processed").symlink_to(serving_package.parent / "processed")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["load_test"]["duration_seconds"] = SECONDS
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    cluster.existing()
    cluster.env["FAKE_KUBECTL_FORWARD_TO"] = forward_to
    command = [
        sys.executable, "-m", "mlops_template.cli", "deploy", "--manifest", str(cluster.manifest),
        "--request", str(cluster.request), "--timeout", "5", "--smoke-attempts", "1",
        "--load-test",
    ]  # fmt: skip
    return subprocess.run(command, cwd=root, env=cluster.env, capture_output=True, text=True,
                          timeout=SECONDS + 180)  # fmt: skip


def test_a_load_test_that_holds_keeps_the_new_version(
    server: Server, serving_package: Path, tmp_path: Path
) -> None:
    cluster = Cluster(tmp_path)
    done = deploy_with_load_test(cluster, serving_package, f"127.0.0.1:{server.http_port}")
    assert done.returncode == 0, done.stderr[-3000:]
    steps = cluster.steps()
    assert steps[-2:] == ["smoke", "port-forward"]
    [forward] = [call["args"] for call in cluster.calls() if call["step"] == "port-forward"]
    assert forward[1] == "service/penguins-default"
    assert forward[2].endswith(":8000")
    assert forward[forward.index("--address") + 1] == "127.0.0.1"
    summary = json.loads((tmp_path / "build" / "load-test_summary.json").read_text())
    assert summary["requests"] > 10
    assert summary["problems"] == []


def test_a_load_test_that_fails_rolls_back(
    server: Server, serving_package: Path, tmp_path: Path
) -> None:
    cluster = Cluster(tmp_path)
    nothing_there = f"127.0.0.1:{free_port()}"  # every request through the forward fails
    done = deploy_with_load_test(cluster, serving_package, nothing_there)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "load test failed (report: build/load-test.html)" in done.stderr
    assert "port-forward" in cluster.steps()
    assert "rolled back" in done.stderr
    assert cluster.applied_files()[-1].endswith(".previous.yaml")
