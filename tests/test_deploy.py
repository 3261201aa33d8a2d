"""`mlops deploy` decisions, run against a `kubectl` stand-in (tests/fake_kubectl/kubectl).

No Kubernetes cluster can run where these tests run, so the stand-in records each kubectl call
and fails on demand; the tests check what the command decides: apply, wait, smoke request,
roll back to the previous manifest, remove a failed first deploy, apply nothing on a dry run.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

FAKE_KUBECTL_DIR = Path(__file__).parent / "fake_kubectl"

MANIFEST = """\
apiVersion: machinelearning.seldon.io/v1
kind: SeldonDeployment
metadata:
  name: penguins
  namespace: {namespace}
spec:
  predictors:
    - name: default
      replicas: 1
      componentSpecs:
        - spec:
            containers:
              - name: classifier
                image: {image}
      graph:
        name: classifier
        type: MODEL
"""

REQUEST = {"data": {"names": ["a", "b"], "ndarray": [[1.0, 2.0], [3.0, 4.0]]}}
KUBECONFIG_TEXT = "apiVersion: v1\nkind: Config\nclusters: []\n"


class Cluster:
    """A work directory with a manifest, a smoke request and the kubectl stand-in on PATH."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.manifest = root / "seldon.yaml"
        self.manifest.write_text(MANIFEST.format(namespace="models", image="registry/new:2"))
        self.request = root / "sample_request.json"
        self.request.write_text(json.dumps(REQUEST))
        self.previous_text = MANIFEST.format(namespace="models", image="registry/old:1")
        self.log = root / "kubectl.jsonl"
        self.env = {
            **os.environ,
            "PATH": f"{FAKE_KUBECTL_DIR}{os.pathsep}{os.environ['PATH']}",
            "FAKE_KUBECTL_LOG": str(self.log),
        }
        for name in list(self.env):
            if name.startswith("FAKE_KUBECTL_") and name != "FAKE_KUBECTL_LOG":
                del self.env[name]

    def existing(self) -> None:
        """Make the stand-in report a deployment that `kubectl apply` created earlier."""
        previous = self.root / "last-applied.yaml"
        previous.write_text(self.previous_text)
        self.env["FAKE_KUBECTL_EXISTING"] = "1"
        self.env["FAKE_KUBECTL_PREVIOUS"] = str(previous)

    def deploy(self, *extra: str) -> subprocess.CompletedProcess[str]:
        """Run `mlops deploy` as a user would and return the finished process."""
        command = [sys.executable, "-m", "mlops_template.cli", "deploy"]
        command += ["--manifest", str(self.manifest), "--request", str(self.request)]
        command += ["--timeout", "5", "--smoke-attempts", "2", "--smoke-interval", "0", *extra]
        return subprocess.run(
            command, env=self.env, capture_output=True, text=True, timeout=60, check=False
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


@pytest.fixture
def cluster(tmp_path: Path) -> Cluster:
    """A fresh stand-in cluster per test."""
    return Cluster(tmp_path)


def test_success_applies_waits_smokes_and_keeps_the_new_version(cluster: Cluster) -> None:
    cluster.existing()
    done = cluster.deploy()
    assert done.returncode == 0, done.stderr
    assert cluster.steps() == ["get", "view-last-applied", "apply", "wait", "rollout", "smoke"]
    assert cluster.applied_files() == [str(cluster.manifest)]  # no rollback apply
    calls = cluster.calls()
    assert "--for=jsonpath={.status.state}=Available" in calls[3]["args"]
    assert "--selector=seldon-deployment-id=penguins" in calls[4]["args"]
    smoke_path = calls[5]["args"][2]
    assert smoke_path == (
        "/api/v1/namespaces/models/services/penguins-default:8000/proxy/api/v1.0/predictions"
    )
    for call in calls:  # every namespaced call names the manifest's namespace
        if call["step"] != "smoke":
            assert call["args"][call["args"].index("--namespace") + 1] == "models"
    # The rollback target is kept beside the manifest for the workflow's artifact.
    assert (cluster.root / "seldon.previous.yaml").read_text() == cluster.previous_text
    assert "deployed seldondeployment/penguins to models" in done.stderr


def test_wait_failure_rolls_back_to_the_previous_manifest(cluster: Cluster) -> None:
    cluster.existing()
    cluster.env["FAKE_KUBECTL_FAIL"] = "wait:1"  # the new version never becomes available
    done = cluster.deploy()
    assert done.returncode == 1
    previous = cluster.root / "seldon.previous.yaml"
    assert cluster.applied_files() == [str(cluster.manifest), str(previous)]
    assert previous.read_text() == cluster.previous_text
    # After re-applying the old manifest it waits for that one too, and sends no smoke request.
    assert cluster.steps()[-3:] == ["apply", "wait", "rollout"]
    assert "smoke" not in cluster.steps()
    assert "waiting for the deployment failed" in done.stderr
    assert "rolled back seldondeployment/penguins to the previous manifest" in done.stderr


def test_smoke_failure_rolls_back_after_bounded_retries(cluster: Cluster) -> None:
    cluster.existing()
    cluster.env["FAKE_KUBECTL_SMOKE"] = "wrong-rows"
    done = cluster.deploy()
    assert done.returncode == 1
    assert cluster.steps().count("smoke") == 2  # --smoke-attempts 2, then give up
    assert cluster.applied_files()[-1] == str(cluster.root / "seldon.previous.yaml")
    assert "expected 2 predictions, got 1" in done.stderr
    assert "rolled back" in done.stderr


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
    assert cluster.applied_files() == [str(cluster.manifest)]


def test_first_deploy_failure_removes_the_new_deployment(cluster: Cluster) -> None:
    cluster.env["FAKE_KUBECTL_FAIL"] = "wait"
    done = cluster.deploy()
    assert done.returncode == 1
    assert "view-last-applied" not in cluster.steps()  # nothing existed, nothing to save
    assert cluster.applied_files() == [str(cluster.manifest)]
    delete = cluster.calls()[-1]
    assert delete["step"] == "delete"
    assert delete["args"][delete["args"].index("-f") + 1] == str(cluster.manifest)
    assert "no earlier version to roll back to" in done.stderr
    assert not (cluster.root / "seldon.previous.yaml").exists()


def test_first_deploy_success_needs_no_previous_manifest(cluster: Cluster) -> None:
    done = cluster.deploy()
    assert done.returncode == 0, done.stderr
    assert cluster.steps() == ["get", "apply", "wait", "rollout", "smoke"]


def test_failed_rollback_exits_3_and_says_so(cluster: Cluster) -> None:
    cluster.existing()
    cluster.env["FAKE_KUBECTL_FAIL"] = "wait"  # neither the new nor the old version comes up
    done = cluster.deploy()
    assert done.returncode == 3
    assert "needs a manual look" in done.stderr


def test_dry_run_validates_on_the_server_and_applies_nothing(cluster: Cluster) -> None:
    cluster.existing()
    done = cluster.deploy("--dry-run")
    assert done.returncode == 0, done.stderr
    assert cluster.steps() == ["dry-run"]
    assert cluster.applied_files() == []
    assert "nothing was applied" in done.stderr


def test_dry_run_rejected_by_the_cluster_fails(cluster: Cluster) -> None:
    cluster.env["FAKE_KUBECTL_FAIL"] = "dry-run"
    done = cluster.deploy("--dry-run")
    assert done.returncode == 1
    assert "dry run failed" in done.stderr
    assert cluster.applied_files() == []


def test_existing_deployment_without_apply_history_is_left_alone(cluster: Cluster) -> None:
    cluster.env["FAKE_KUBECTL_EXISTING"] = "1"  # exists, but no last-applied annotation
    done = cluster.deploy()
    assert done.returncode == 2
    assert "no manifest to roll back to" in done.stderr
    assert cluster.applied_files() == []


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ("kind: Deployment\nmetadata: {name: x}\n", "exactly one SeldonDeployment, found 0"),
        (
            MANIFEST.replace("  namespace: {namespace}\n", "").format(image="x"),
            "has no metadata.namespace",
        ),
        ("kind: [unclosed\n", "is not valid YAML"),
    ],
)
def test_bad_manifest_is_a_one_line_error_before_any_kubectl_call(
    cluster: Cluster, manifest: str, message: str
) -> None:
    cluster.manifest.write_text(manifest)
    done = cluster.deploy()
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: ")
    assert message in lines[0]
    assert cluster.calls() == []


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


def test_deploys_what_mlops_manifest_renders(cluster: Cluster) -> None:
    # The deploy workflow feeds `mlops manifest` output to `mlops deploy`: they must agree on the
    # name, namespace and predictor that the wait and the smoke request address.
    from mlops_template.manifest import render_seldon_deployment, to_yaml

    rendered = render_seldon_deployment(image="ghcr.io/owner/repo:abc123", namespace="staging")
    cluster.manifest.write_text(to_yaml(rendered))
    done = cluster.deploy()
    assert done.returncode == 0, done.stderr
    calls = cluster.calls()
    assert calls[2]["args"][:2] == ["wait", f"seldondeployment/{rendered['metadata']['name']}"]
    service = f"{rendered['metadata']['name']}-{rendered['spec']['predictors'][0]['name']}"
    assert calls[-1]["args"][2].startswith(f"/api/v1/namespaces/staging/services/{service}:8000/")
