"""`mlops deploy` decisions, run against a `kubectl` stand-in (tests/fake_kubectl/).

No Kubernetes cluster can run where these tests run, so the stand-in is a small in-memory API
server for SeldonDeployments, kept in a file between calls: what one call applies, the next
reads back, annotations and traffic weights included. The tests check what the command
decides: the gate (first deploy, same model, better, worse, forced, other test data), apply,
wait, smoke request, a canary promoted or removed, roll back to the previous manifest, remove a
failed first deploy, apply nothing on a dry run; and the one line each outcome adds to the job
summary. Seldon's operator itself is not modelled: `wait` succeeds unless told to fail.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlops_template.manifest import render_seldon_deployment, to_yaml
from tests.conftest import REPO, package_metadata

FAKE_KUBECTL_DIR = Path(__file__).parent / "fake_kubectl"
NEW_IMAGE = "registry/new:2"
OLD_IMAGE = "registry/old:1"
NEW_SHA, OLD_SHA = "2" * 64, "1" * 64
DATA = "d" * 64
REQUEST = {"data": {"names": ["a", "b"], "ndarray": [[1.0, 2.0], [3.0, 4.0]]}}
KUBECONFIG_TEXT = "apiVersion: v1\nkind: Config\nclusters: []\n"


def manifest_text(
    image: str, sha: str, f1: float, data: str = DATA, namespace: str = "models"
) -> str:
    """What `mlops manifest` renders for a model with this sha256, F1 score and test data."""
    model = package_metadata(
        model_sha256=sha,
        evaluation_data_sha256=data,
        metrics={"f1_macro": f1, "log_loss": 0.3},
    )
    rendered = render_seldon_deployment(image, name="penguins", namespace=namespace, model=model)
    return to_yaml(rendered)


class Cluster:
    """A work directory with a manifest, a smoke request, params and the kubectl stand-in."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.manifest = root / "seldon.yaml"
        self.manifest.write_text(manifest_text(NEW_IMAGE, NEW_SHA, f1=0.95))
        self.request = root / "sample_request.json"
        self.request.write_text(json.dumps(REQUEST))
        self.params = root / "params.yaml"
        self.set_params()
        self.log = root / "kubectl.jsonl"
        self.summary = root / "summary.md"
        self.env = {
            **os.environ,
            "PATH": f"{FAKE_KUBECTL_DIR}{os.pathsep}{os.environ['PATH']}",
            "FAKE_KUBECTL_LOG": str(self.log),
            "FAKE_KUBECTL_STATE": str(root / "cluster.json"),
            "FAKE_KUBECTL_PYTHON": sys.executable,
            "GITHUB_STEP_SUMMARY": str(self.summary),
        }
        for name in list(self.env):
            if name.startswith("FAKE_KUBECTL_UPSTREAM_") or name in (
                "FAKE_KUBECTL_FAIL", "FAKE_KUBECTL_SMOKE", "FAKE_KUBECTL_BROKEN_IMAGES",
                "FAKE_KUBECTL_FORWARD_TO", "MLFLOW_TRACKING_URI",
            ):  # fmt: skip
                del self.env[name]

    def set_params(self, **deploy: dict[str, Any]) -> None:
        """The repository's params.yaml, with a short canary window and `deploy` blocks updated."""
        params = yaml.safe_load((REPO / "params.yaml").read_text())
        params["deploy"]["canary"].update(observe_seconds=2, probe_interval_seconds=0.5)
        for block, values in deploy.items():
            params["deploy"][block].update(values)
        self.params.write_text(yaml.safe_dump(params))

    def kubectl(self, *args: str) -> None:
        """Act on the stand-in's cluster directly (not recorded as the command's calls)."""
        env = {**self.env, "FAKE_KUBECTL_LOG": str(self.root / "setup.jsonl")}
        done = subprocess.run(
            ["kubectl", *args], env=env, capture_output=True, text=True, timeout=30, check=False
        )
        assert done.returncode == 0, done.stderr

    def existing(self, text: str | None = None, *, how: str = "apply") -> None:
        """A live deployment, applied earlier (default: the old model, F1 0.90, same test data)."""
        path = self.root / "live.yaml"
        path.write_text(text or manifest_text(OLD_IMAGE, OLD_SHA, f1=0.90))
        self.kubectl(how, "-f", str(path), "--namespace", "models")

    def live(self) -> dict[str, Any] | None:
        """The SeldonDeployment as the stand-in's API server holds it now."""
        state_file = self.root / "cluster.json"
        state = json.loads(state_file.read_text()) if state_file.exists() else {}
        return state.get("models/penguins")

    def live_images(self) -> list[tuple[str, str, int | None]]:
        """(predictor, image, traffic) of each live predictor."""
        live = self.live()
        assert live is not None
        return [
            (p["name"], p["componentSpecs"][0]["spec"]["containers"][0]["image"], p.get("traffic"))
            for p in live["spec"]["predictors"]
        ]

    def deploy(self, *extra: str) -> subprocess.CompletedProcess[str]:
        """Run `mlops deploy` as a user would and return the finished process."""
        command = [sys.executable, "-m", "mlops_template.cli", "deploy"]
        command += ["--manifest", str(self.manifest), "--request", str(self.request)]
        command += ["--params", str(self.params), "--timeout", "5"]
        command += ["--smoke-attempts", "2", "--smoke-interval", "0", *extra]
        return subprocess.run(
            command, env=self.env, capture_output=True, text=True, timeout=120, check=False
        )

    def calls(self) -> list[dict]:
        """Every kubectl call the command made, in order."""
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def steps(self) -> list[str]:
        """The step name of every call, in order."""
        return [call["step"] for call in self.calls()]

    def applied_files(self) -> list[str]:
        """Files passed to a real (not dry-run) `kubectl apply -f`."""
        return [
            call["args"][call["args"].index("-f") + 1]
            for call in self.calls()
            if call["step"] == "apply"
        ]

    def summary_lines(self) -> list[str]:
        """The lines the command added to the job summary."""
        return self.summary.read_text().splitlines() if self.summary.exists() else []


@pytest.fixture
def cluster(tmp_path: Path) -> Cluster:
    """A fresh stand-in cluster per test."""
    return Cluster(tmp_path)


# --- the gate --------------------------------------------------------------------------------


def test_first_deploy_applies_waits_smokes_and_records_what_runs(cluster: Cluster) -> None:
    done = cluster.deploy()
    assert done.returncode == 0, done.stderr
    assert cluster.steps() == ["get", "apply", "wait", "rollout", "smoke"]
    assert cluster.live_images() == [("default", NEW_IMAGE, None)]
    annotations = cluster.live()["metadata"]["annotations"]
    assert annotations["mlops-template/model-sha256"] == NEW_SHA
    assert annotations["mlops-template/evaluation-data-sha256"] == DATA
    assert json.loads(annotations["mlops-template/metrics"])["f1_macro"] == 0.95
    assert "mlops-template/forced" not in annotations
    assert cluster.summary_lines() == [
        f"- first deploy of model {NEW_SHA[:12]}",
        "- deployed seldondeployment/penguins to models",
    ]


def test_better_model_replaces_the_live_one(cluster: Cluster) -> None:
    cluster.existing()
    done = cluster.deploy()
    assert done.returncode == 0, done.stderr
    assert cluster.steps() == ["get", "apply", "wait", "rollout", "smoke"]
    calls = cluster.calls()
    assert "--for=jsonpath={.status.state}=Available" in calls[2]["args"]
    assert "--selector=seldon-deployment-id=penguins" in calls[3]["args"]
    assert calls[4]["args"][2] == (
        "/api/v1/namespaces/models/services/penguins-default:8000/proxy/api/v1.0/predictions"
    )
    for call in calls:  # every namespaced call names the manifest's namespace
        if call["step"] != "smoke":
            assert call["args"][call["args"].index("--namespace") + 1] == "models"
    assert cluster.live_images() == [("default", NEW_IMAGE, None)]
    # The rollback target is kept beside the manifest for the workflow's artifact.
    previous = yaml.safe_load((cluster.root / "seldon.previous.yaml").read_text())
    assert previous["metadata"]["annotations"]["mlops-template/model-sha256"] == OLD_SHA
    assert cluster.summary_lines()[0] == (
        f"- model {NEW_SHA[:12]} passes the gate: f1_macro 0.95 against the live model's 0.9: "
        "no worse"
    )


def test_same_model_applies_nothing(cluster: Cluster) -> None:
    cluster.existing(manifest_text(NEW_IMAGE, NEW_SHA, f1=0.95))
    before = cluster.live()
    done = cluster.deploy()
    assert done.returncode == 0, done.stderr
    assert cluster.steps() == ["get"]
    assert cluster.live() == before
    assert cluster.summary_lines() == [
        f"- model {NEW_SHA[:12]} is already running: nothing applied"
    ]


def test_worse_model_is_refused_with_both_values(cluster: Cluster) -> None:
    cluster.existing(manifest_text(OLD_IMAGE, OLD_SHA, f1=0.97))
    before = cluster.live()
    done = cluster.deploy()
    assert done.returncode == 4
    assert cluster.steps() == ["get"]
    assert cluster.live() == before
    message = "f1_macro 0.95 against the live model's 0.97 is worse by more than the tolerance 0"
    assert message in done.stderr
    assert "--force" in cluster.summary_lines()[0]
    assert not (cluster.root / "seldon.applied.yaml").exists()


def test_worse_within_the_tolerance_passes(cluster: Cluster) -> None:
    cluster.existing(manifest_text(OLD_IMAGE, OLD_SHA, f1=0.97))
    cluster.set_params(gate={"tolerance": 0.05})
    done = cluster.deploy()
    assert done.returncode == 0, done.stderr
    assert cluster.live_images() == [("default", NEW_IMAGE, None)]


def test_lower_is_better_metric(cluster: Cluster) -> None:
    cluster.existing()  # log_loss 0.3 both: equal passes
    cluster.set_params(gate={"metric": "log_loss"})  # lower is better: evaluate.HIGHER_IS_BETTER
    assert cluster.deploy().returncode == 0
    cluster.manifest.write_text(manifest_text(OLD_IMAGE, "3" * 64, f1=0.99).replace("0.3", "0.4"))
    done = cluster.deploy()
    assert done.returncode == 4
    assert "log_loss 0.4 against the live model's 0.3 is worse" in done.stderr


def test_worse_model_with_force_is_deployed_and_says_so(cluster: Cluster) -> None:
    cluster.existing(manifest_text(OLD_IMAGE, OLD_SHA, f1=0.97))
    done = cluster.deploy("--force")
    assert done.returncode == 0, done.stderr
    assert cluster.live_images() == [("default", NEW_IMAGE, None)]
    forced = cluster.live()["metadata"]["annotations"]["mlops-template/forced"]
    assert "f1_macro 0.95 against the live model's 0.97 is worse" in forced
    assert cluster.summary_lines()[0].startswith(f"- model {NEW_SHA[:12]} deployed by force:")


def test_models_scored_on_different_test_data_are_not_compared(cluster: Cluster) -> None:
    cluster.existing(manifest_text(OLD_IMAGE, OLD_SHA, f1=0.5, data="e" * 64))
    done = cluster.deploy()
    assert done.returncode == 4
    assert "scored on different test data (live eeeeeeeeeeee, new dddddddddddd)" in done.stderr
    assert cluster.steps() == ["get"]
    forced = cluster.deploy("--force")
    assert forced.returncode == 0, forced.stderr
    assert (
        "different test data" in cluster.live()["metadata"]["annotations"]["mlops-template/forced"]
    )


def test_live_model_without_gate_annotations_is_refused_unless_forced(cluster: Cluster) -> None:
    text = yaml.safe_load(manifest_text(OLD_IMAGE, OLD_SHA, f1=0.9))
    text["metadata"]["annotations"] = {"mlops-template/model-sha256": OLD_SHA}
    cluster.existing(to_yaml(text))
    done = cluster.deploy()
    assert done.returncode == 4
    assert "does not record its f1_macro and test-data hash" in done.stderr


def test_gate_metric_the_model_does_not_have_is_a_user_error(cluster: Cluster) -> None:
    cluster.existing()
    cluster.set_params(gate={"metric": "roc_auc"})  # a metric, but not in these test manifests
    done = cluster.deploy()
    assert done.returncode == 2
    assert "deploy.gate.metric 'roc_auc' is not among the new model's test metrics" in done.stderr
    assert cluster.applied_files() == []


def test_gate_metric_the_pipeline_does_not_define_is_a_params_error(cluster: Cluster) -> None:
    cluster.existing()
    cluster.set_params(gate={"metric": "r2"})
    done = cluster.deploy()
    assert done.returncode == 2
    assert "deploy.gate.metric must name a test metric (metrics.json), got 'r2'" in done.stderr
    assert cluster.applied_files() == []


def test_dry_run_reports_the_decision_and_applies_nothing(cluster: Cluster) -> None:
    cluster.existing()
    before = cluster.live()
    done = cluster.deploy("--dry-run")
    assert done.returncode == 0, done.stderr
    assert cluster.steps() == ["get", "dry-run"]
    assert cluster.live() == before
    assert cluster.summary_lines() == [
        f"- dry run: model {NEW_SHA[:12]} passes the gate: f1_macro 0.95 against the live "
        "model's 0.9: no worse; the manifest is valid for the cluster; nothing was applied"
    ]
    cluster.existing(manifest_text(OLD_IMAGE, OLD_SHA, f1=0.99))
    refused = cluster.deploy("--dry-run")
    assert refused.returncode == 4
    assert cluster.live()["metadata"]["annotations"]["mlops-template/model-sha256"] == OLD_SHA


def test_dry_run_rejected_by_the_cluster_fails(cluster: Cluster) -> None:
    cluster.env["FAKE_KUBECTL_FAIL"] = "dry-run"
    done = cluster.deploy("--dry-run")
    assert done.returncode == 1
    assert "dry run failed" in done.stderr
    assert cluster.applied_files() == []


# --- applying, checking, rolling back ----------------------------------------------------------


def test_wait_failure_rolls_back_to_the_previous_manifest(cluster: Cluster) -> None:
    cluster.existing()
    cluster.env["FAKE_KUBECTL_FAIL"] = "wait:1"  # the new version never becomes available
    done = cluster.deploy()
    assert done.returncode == 1
    previous = cluster.root / "seldon.previous.yaml"
    assert cluster.applied_files() == [str(cluster.root / "seldon.applied.yaml"), str(previous)]
    # After re-applying the old manifest it waits for that one too, and sends no smoke request.
    assert cluster.steps()[-3:] == ["apply", "wait", "rollout"]
    assert "smoke" not in cluster.steps()
    assert cluster.live_images() == [("default", OLD_IMAGE, None)]
    assert "waiting for the deployment failed" in done.stderr
    assert "rolled back seldondeployment/penguins to the previous manifest" in done.stderr
    assert cluster.summary_lines()[-1].startswith("- deploy failed (waiting for the deployment")


def test_smoke_failure_rolls_back_after_bounded_retries(cluster: Cluster) -> None:
    cluster.existing()
    cluster.env["FAKE_KUBECTL_SMOKE"] = "wrong-rows"
    done = cluster.deploy()
    assert done.returncode == 1
    assert cluster.steps().count("smoke") == 2  # --smoke-attempts 2, then give up
    assert cluster.applied_files()[-1] == str(cluster.root / "seldon.previous.yaml")
    assert cluster.live_images() == [("default", OLD_IMAGE, None)]
    assert "expected 2 predictions, got 1" in done.stderr


def test_smoke_answer_that_is_not_json_counts_as_failure(cluster: Cluster) -> None:
    cluster.existing()
    cluster.env["FAKE_KUBECTL_SMOKE"] = "not-json"
    done = cluster.deploy()
    assert done.returncode == 1
    assert "answer is not a Seldon prediction" in done.stderr
    assert len(cluster.applied_files()) == 2


def test_smoke_retries_while_the_service_settles(cluster: Cluster) -> None:
    cluster.existing()
    cluster.env["FAKE_KUBECTL_FAIL"] = "smoke:1"  # endpoints not ready on the first try
    done = cluster.deploy()
    assert done.returncode == 0, done.stderr
    assert cluster.steps().count("smoke") == 2
    assert cluster.applied_files() == [str(cluster.root / "seldon.applied.yaml")]


def test_first_deploy_failure_removes_the_new_deployment(cluster: Cluster) -> None:
    cluster.env["FAKE_KUBECTL_FAIL"] = "wait"
    done = cluster.deploy()
    assert done.returncode == 1
    delete = cluster.calls()[-1]
    assert delete["step"] == "delete"
    assert cluster.live() is None
    assert "no earlier version to roll back to" in done.stderr
    assert not (cluster.root / "seldon.previous.yaml").exists()
    assert "removed the failed first deploy" in cluster.summary_lines()[-1]


def test_failed_rollback_exits_3_and_says_so(cluster: Cluster) -> None:
    cluster.existing()
    cluster.env["FAKE_KUBECTL_FAIL"] = "wait"  # neither the new nor the old version comes up
    done = cluster.deploy()
    assert done.returncode == 3
    assert "needs a manual look" in done.stderr


def test_cluster_unreachable_is_one_line_and_nothing_applied(cluster: Cluster) -> None:
    cluster.env["FAKE_KUBECTL_FAIL"] = "get"
    done = cluster.deploy()
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert cluster.steps() == ["get"]
    assert "looking up the live deployment failed" in cluster.summary_lines()[0]


def test_existing_deployment_without_apply_history_is_left_alone(cluster: Cluster) -> None:
    cluster.existing(how="create")  # exists, but no last-applied annotation
    done = cluster.deploy()
    assert done.returncode == 2
    assert "no manifest to roll back to" in done.stderr
    assert cluster.applied_files() == []


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ("kind: Deployment\nmetadata: {name: x}\n", "exactly one SeldonDeployment, found 0"),
        (
            manifest_text(NEW_IMAGE, NEW_SHA, 0.9).replace("  namespace: models\n", "", 1),
            "has no metadata.namespace",
        ),
        ("kind: [unclosed\n", "is not valid YAML"),
        (
            manifest_text(NEW_IMAGE, NEW_SHA, 0.9).replace("mlops-template/model-sha256", "x/y"),
            "the manifest has no mlops-template/model-sha256 annotation",
        ),
    ],
)
def test_bad_manifest_is_a_one_line_error_before_anything_is_applied(
    cluster: Cluster, manifest: str, message: str
) -> None:
    cluster.manifest.write_text(manifest)
    done = cluster.deploy()
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ")
    assert message in lines[-1]
    assert cluster.applied_files() == []


def test_missing_smoke_request_stops_before_applying(cluster: Cluster) -> None:
    cluster.request.unlink()
    done = cluster.deploy()
    assert done.returncode == 2
    assert "smoke request" in done.stderr
    assert "does not exist" in done.stderr
    assert cluster.calls() == []


@pytest.mark.parametrize("encode", [False, True], ids=["yaml", "base64"])
def test_kubeconfig_secret_is_a_private_temporary_file(cluster: Cluster, encode: bool) -> None:
    value = KUBECONFIG_TEXT
    if encode:
        value = base64.b64encode(value.encode()).decode()
    cluster.env["KUBE_CONFIG"] = value
    done = cluster.deploy("--kubeconfig-env", "KUBE_CONFIG")
    assert done.returncode == 0, done.stderr
    seen = [call["kubeconfig"] for call in cluster.calls()]
    assert all(view["text"] == KUBECONFIG_TEXT for view in seen)
    assert all(view["mode"] == "0o600" for view in seen)
    assert not Path(seen[0]["path"]).exists()  # removed when the command ends
    assert value not in done.stdout + done.stderr


def test_empty_kubeconfig_secret_is_a_clear_error(cluster: Cluster) -> None:
    cluster.env["KUBE_CONFIG"] = ""
    done = cluster.deploy("--kubeconfig-env", "KUBE_CONFIG")
    assert done.returncode == 2
    assert "KUBE_CONFIG is empty" in done.stderr
    assert cluster.calls() == []


def test_deploys_what_mlops_manifest_renders(cluster: Cluster, tmp_path: Path) -> None:
    # The deploy workflow feeds `mlops manifest` output to `mlops deploy`: they must agree on the
    # name, namespace, predictor and annotations the gate, the wait and the smoke request use.
    package = tmp_path / "package"
    package.mkdir()
    package_metadata(metrics={"f1_macro": 0.9}).write(package)
    command = [sys.executable, "-m", "mlops_template.cli", "manifest", "--image", NEW_IMAGE]
    command += ["--namespace", "staging", "--package", str(package), "--git-commit", "abc123"]
    command += ["--params", str(cluster.params), "--out", str(cluster.manifest)]
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    done = cluster.deploy()
    assert done.returncode == 0, done.stderr
    calls = cluster.calls()
    assert calls[2]["args"][:2] == ["wait", "seldondeployment/classifier"]
    assert calls[-1]["args"][2].startswith(
        "/api/v1/namespaces/staging/services/classifier-default:8000/"
    )


# --- the canary ------------------------------------------------------------------------------


def test_canary_is_observed_then_promoted_leaving_one_predictor(cluster: Cluster) -> None:
    cluster.existing()
    done = cluster.deploy("--canary")
    assert done.returncode == 0, done.stderr
    applied = [Path(path).name for path in cluster.applied_files()]
    assert applied == ["seldon.canary.yaml", "seldon.applied.yaml"]
    canary = yaml.safe_load((cluster.root / "seldon.canary.yaml").read_text())
    predictors = [(p["name"], p["traffic"]) for p in canary["spec"]["predictors"]]
    assert predictors == [("default", 90), ("canary", 10)]  # params.yaml deploy.canary
    labels = canary["spec"]["predictors"][1]["componentSpecs"][0]["metadata"]["labels"]
    assert labels["mlops-template/predictor"] == "canary"
    smoked = [c["args"][2] for c in cluster.calls() if c["step"] == "smoke"]
    assert sum("/services/penguins-canary:8000/" in path for path in smoked) >= 4  # 2 s / 0.5 s
    assert "/services/penguins-default:8000/" in smoked[-1]  # after the promotion
    assert cluster.live_images() == [("default", NEW_IMAGE, None)]
    lines = cluster.summary_lines()
    assert lines[1] == "- canary: the new model gets 10% of requests beside the live one for 2 s"
    assert lines[2].startswith("- canary promoted: ")
    assert lines[-1] == "- deployed seldondeployment/penguins to models"


def test_failing_canary_is_removed_and_the_live_model_keeps_serving(cluster: Cluster) -> None:
    cluster.existing()
    cluster.env["FAKE_KUBECTL_BROKEN_IMAGES"] = NEW_IMAGE
    done = cluster.deploy("--canary")
    assert done.returncode == 1
    assert cluster.live_images() == [("default", OLD_IMAGE, None)]
    assert "mlops-template/canary-model-sha256" not in cluster.live()["metadata"]["annotations"]
    assert [Path(p).name for p in cluster.applied_files()] == [
        "seldon.canary.yaml", "seldon.previous.yaml",
    ]  # fmt: skip
    assert cluster.summary_lines()[-1].startswith("- canary removed: smoke request failed")


def test_canary_failing_midway_through_the_window_is_removed(cluster: Cluster) -> None:
    cluster.existing()
    cluster.env["FAKE_KUBECTL_FAIL"] = "smoke:3"  # the third smoke request to it fails
    done = cluster.deploy("--canary")
    assert done.returncode == 1
    assert cluster.live_images() == [("default", OLD_IMAGE, None)]
    assert cluster.steps().count("smoke") == 3


def test_canary_left_by_an_interrupted_deploy_is_not_the_rollback_target(
    cluster: Cluster,
) -> None:
    cluster.existing()
    cluster.env["FAKE_KUBECTL_FAIL"] = "apply:2"  # promotion never happens: canary stays
    interrupted = cluster.deploy("--canary")
    assert interrupted.returncode == 1
    del cluster.env["FAKE_KUBECTL_FAIL"]
    cluster.kubectl("apply", "-f", str(cluster.root / "seldon.canary.yaml"))
    assert len(cluster.live_images()) == 2
    cluster.env["FAKE_KUBECTL_FAIL"] = "wait"  # and the next deploy fails too
    cluster.log.unlink()
    done = cluster.deploy()
    assert done.returncode == 3  # wait fails for the rollback as well
    previous = yaml.safe_load((cluster.root / "seldon.previous.yaml").read_text())
    assert [p["name"] for p in previous["spec"]["predictors"]] == ["default"]
    assert "traffic" not in previous["spec"]["predictors"][0]


def test_canary_on_a_first_deploy_deploys_directly(cluster: Cluster) -> None:
    done = cluster.deploy("--canary")
    assert done.returncode == 0, done.stderr
    assert "no live model to share requests with" in cluster.summary_lines()[1]
    assert cluster.live_images() == [("default", NEW_IMAGE, None)]


def test_prometheus_url_needs_a_canary(cluster: Cluster) -> None:
    done = cluster.deploy("--prometheus-url", "http://127.0.0.1:9")
    assert done.returncode == 2
    assert "--prometheus-url judges a canary: add --canary" in done.stderr


def test_unreachable_prometheus_removes_the_canary(cluster: Cluster) -> None:
    from mlops_template.processes import free_port

    cluster.existing()
    done = cluster.deploy("--canary", "--prometheus-url", f"http://127.0.0.1:{free_port()}")
    assert done.returncode == 1
    assert "did not answer the canary's query" in cluster.summary_lines()[-1]
    assert cluster.live_images() == [("default", OLD_IMAGE, None)]


def test_rollback_to_needs_a_tracking_server(cluster: Cluster) -> None:
    done = cluster.deploy("--rollback-to", "production")
    assert done.returncode == 2
    assert "--rollback-to reads the MLflow registry: set MLFLOW_TRACKING_URI" in done.stderr
    assert cluster.calls() == []
