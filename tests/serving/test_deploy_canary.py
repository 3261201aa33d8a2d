"""`mlops deploy --canary --prometheus-url`: the canary judged by a real Prometheus.

The cluster is the kubectl stand-in of tests/test_deploy.py; its smoke requests to the canary's
Service go to the real microservice on loopback, which a real Prometheus scrapes every second
with the labels a PodMonitor gives a canary pod in the cluster. The deploy queries that
Prometheus for the canary's 5xx ratio and p99 latency over the observation window, as it would
kube-prometheus-stack's.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from mlops_template import monitoring
from mlops_template.cli import main
from mlops_template.serving.contract import PackageMetadata
from tests.serving.conftest import Server, scraped
from tests.test_deploy import OLD_IMAGE, OLD_SHA, Cluster, manifest_text

pytestmark = pytest.mark.slow

OBSERVE_SECONDS = 6


@pytest.fixture(scope="module")
def canary_server(
    serving_package: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, str]]:
    """The real microservice as the canary's pod, and a Prometheus scraping it as one."""
    labels = {monitoring.BY: "penguins", "namespace": "models", monitoring.PREDICTOR_BY: "canary"}
    with scraped(serving_package, tmp_path_factory.mktemp("canary"), labels) as watched:
        yield watched


def deploy_canary(
    serving_package: Path, server: Server, prometheus_url: str, root: Path, p99_seconds: float
) -> tuple[Cluster, subprocess.CompletedProcess[str]]:
    """`mlops deploy --canary` of the package's model over an older, weaker live model."""
    cluster = Cluster(root)
    model = PackageMetadata.read(serving_package)
    command = [
        "--image", "registry/new:2", "--name", "penguins", "--namespace", "models",
        "--package", str(serving_package), "--no-monitoring", "--out", str(cluster.manifest),
    ]  # fmt: skip
    assert main(["manifest", *command]) == 0
    cluster.existing(manifest_text(OLD_IMAGE, OLD_SHA, f1=0.1, data=model.evaluation_data_sha256))
    params = yaml.safe_load(cluster.params.read_text())
    params["deploy"]["canary"].update(observe_seconds=OBSERVE_SECONDS, probe_interval_seconds=0.2)
    params["monitoring"]["p99_latency_seconds"] = p99_seconds
    cluster.params.write_text(yaml.safe_dump(params))
    cluster.request = serving_package / "sample_request.json"
    for predictor in ("CANARY", "DEFAULT"):
        cluster.env[f"FAKE_KUBECTL_UPSTREAM_{predictor}"] = f"127.0.0.1:{server.http_port}"
    return cluster, cluster.deploy("--canary", "--prometheus-url", prometheus_url)


def test_canary_within_the_limits_is_promoted(
    canary_server: tuple[Server, str], serving_package: Path, tmp_path: Path
) -> None:
    cluster, done = deploy_canary(serving_package, *canary_server, tmp_path, p99_seconds=0.5)
    assert done.returncode == 0, done.stderr[-3000:]
    [promoted] = [line for line in cluster.summary_lines() if "canary promoted" in line]
    assert "; Prometheus: " in promoted
    assert "0.0% answered 5xx, p99 " in promoted
    requests = int(promoted.split("Prometheus: ")[1].split(" requests")[0])
    assert requests >= 5  # the smoke requests of the window, as Prometheus counted them
    assert cluster.live_images() == [("default", "registry/new:2", None)]


def test_canary_slower_than_the_limit_is_removed(
    canary_server: tuple[Server, str], serving_package: Path, tmp_path: Path
) -> None:
    cluster, done = deploy_canary(serving_package, *canary_server, tmp_path, p99_seconds=1e-6)
    assert done.returncode == 1, done.stderr[-3000:]
    assert cluster.summary_lines()[-1].startswith("- canary removed: canary: p99 latency ")
    assert "above monitoring.p99_latency_seconds (0.001 ms)" in cluster.summary_lines()[-1]
    assert cluster.live_images() == [("default", OLD_IMAGE, None)]
