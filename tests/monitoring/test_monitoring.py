"""The dashboard, the alert rules and the Kubernetes monitoring objects, checked offline.

What Prometheus makes of them on real traffic is in test_prometheus.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mlops_template import monitoring
from mlops_template.params import load_params, monitoring_params
from tests.conftest import REPO, package_metadata

HERE = Path(__file__).parent
LIMITS = monitoring_params(load_params(REPO / "params.yaml"))
STALE = "monitoring/{} is not what the code renders: run `make monitoring-files` and commit it"


def promtool() -> str:
    """The promtool binary (`make test` installs Prometheus)."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: `make test-tools` installs Debian's prometheus package")
    return path


def test_the_committed_dashboard_and_rules_are_what_the_code_renders() -> None:
    committed = REPO / monitoring.DEFAULT_DIR
    assert (committed / monitoring.DASHBOARD_FILE).read_text() == monitoring.dashboard_json(), (
        STALE.format(monitoring.DASHBOARD_FILE)
    )
    assert (committed / monitoring.RULES_FILE).read_text() == monitoring.rules_yaml(LIMITS), (
        STALE.format(monitoring.RULES_FILE)
    )


def test_the_dashboard_holds_every_panel_and_its_queries() -> None:
    dashboard = monitoring.dashboard()
    assert dashboard["uid"] == monitoring.DASHBOARD_UID
    panels = {panel["title"]: panel for panel in dashboard["panels"]}
    assert list(panels) == [panel.title for panel in monitoring.PANELS]
    for panel in monitoring.PANELS:
        targets = panels[panel.title]["targets"]
        assert [target["expr"] for target in targets] == [expr for _, expr in panel.lines]
        assert len({target["refId"] for target in targets}) == len(targets)


def test_every_panel_query_is_valid_promql(tmp_path: Path) -> None:
    """promtool parses each query, as a recording rule of a throwaway rules file."""
    queries = [query for panel in monitoring.PANELS for query in panel.queries()]
    rules = {
        "groups": [
            {
                "name": "panels",
                "rules": [{"record": f"panel:{i}", "expr": q} for i, q in enumerate(queries)],
            }
        ]
    }
    path = tmp_path / "panels.yml"
    path.write_text(yaml.safe_dump(rules))
    done = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(queries)} rules found" in done.stdout


def test_each_alert_fires_past_its_threshold_and_not_below(tmp_path: Path) -> None:
    """`promtool test rules` with a firing and a quiet model for every alert."""
    shutil.copy(HERE / "alerts_test.yml", tmp_path / "alerts_test.yml")
    (tmp_path / monitoring.RULES_FILE).write_text(monitoring.rules_yaml(LIMITS))
    check = subprocess.run(
        [promtool(), "check", "rules", monitoring.RULES_FILE],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    tested = subprocess.run(
        [promtool(), "test", "rules", "alerts_test.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    covered = {
        test["alertname"]
        for case in yaml.safe_load((HERE / "alerts_test.yml").read_text())["tests"]
        for test in case["alert_rule_test"]
    }
    assert covered == {alert.name for alert in monitoring.alerts(LIMITS)}


def rendered(tmp_path: Path, *options: str) -> list[dict]:
    """The documents `mlops manifest` writes."""
    package = tmp_path / "serving"
    package.mkdir(parents=True)
    package_metadata().write(package)
    out = tmp_path / "manifest.yaml"
    command = [
        sys.executable, "-m", "mlops_template.cli", "manifest", "--image", "ghcr.io/acme/m:1",
        "--name", "penguins", "--namespace", "models", "--package", str(package),
        "--params", str(REPO / "params.yaml"), "--out", str(out), *options,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    return list(yaml.safe_load_all(out.read_text()))


def test_the_manifest_brings_a_pod_monitor_the_rules_and_the_dashboard(tmp_path: Path) -> None:
    documents = rendered(tmp_path)
    assert [doc["kind"] for doc in documents] == [
        "SeldonDeployment", "PodMonitor", "PrometheusRule", "ConfigMap",
    ]  # fmt: skip
    _, pod_monitor, rule, config_map = documents
    for document in (pod_monitor, rule, config_map):
        assert document["metadata"]["namespace"] == "models"
    assert pod_monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert pod_monitor["spec"]["selector"] == {"matchLabels": {"seldon-deployment-id": "penguins"}}
    # Series per model and per predictor (a canary's pods carry mlops-template/predictor: canary).
    assert pod_monitor["spec"]["podTargetLabels"] == [
        "seldon-deployment-id", "mlops-template/predictor",
    ]  # fmt: skip
    [endpoint] = pod_monitor["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/prometheus")
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["spec"] == yaml.safe_load((REPO / "monitoring" / "rules.yml").read_text())
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = config_map["data"][monitoring.DASHBOARD_FILE]
    assert json.loads(dashboard) == json.loads((REPO / "monitoring/dashboard.json").read_text())


def test_the_objects_validate_against_their_schemas(tmp_path: Path) -> None:
    """Kubernetes' own schema for the ConfigMap; prometheus-operator's CRD schemas, as generated
    models, for the PodMonitor and PrometheusRule: every field known, every type right."""
    import kubernetes_validate
    from cloudcoil.models.prometheus_operator import v1

    _, pod_monitor, rule, config_map = rendered(tmp_path)
    kubernetes_validate.validate(config_map, "1.30", strict=True)
    for document, model in ((pod_monitor, v1.PodMonitor), (rule, v1.PrometheusRule)):
        parsed = model.model_validate(document)
        # A field the schema does not know is dropped when dumped: the round trip shows it.
        assert parsed.model_dump(by_alias=True, exclude_unset=True, mode="json") == document


def test_monitoring_can_be_left_out_and_its_label_chosen(tmp_path: Path) -> None:
    without = rendered(tmp_path / "a", "--no-monitoring")
    assert [doc["kind"] for doc in without] == ["SeldonDeployment"]
    chosen = rendered(tmp_path / "b", "--monitoring-label", "prometheus=main")
    assert chosen[1]["metadata"]["labels"]["prometheus"] == "main"
    assert "release" not in chosen[1]["metadata"]["labels"]


def test_the_thresholds_come_from_params() -> None:
    rules = {alert.name: alert.expr for alert in monitoring.alerts(LIMITS)}
    assert rules["ModelServerErrors"].endswith(f"> {LIMITS.server_error_ratio}")
    assert rules["ModelLatencyHigh"].endswith(f"> {LIMITS.p99_latency_seconds}")
    assert rules["ModelInputDrift"].endswith(f"> {LIMITS.input_psi}")
