"""`mlops manifest` and `render_seldon_deployment`: the SeldonDeployment that gets deployed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlops_template.deploy import read_manifest, target_of
from mlops_template.errors import UserError
from mlops_template.manifest import package_manifest, render_seldon_deployment, to_yaml

from .conftest import REPO, package_metadata

SHA = "ab" * 32


def container_of(manifest: dict[str, Any]) -> dict[str, Any]:
    """The model container of the first predictor."""
    return manifest["spec"]["predictors"][0]["componentSpecs"][0]["spec"]["containers"][0]


def test_renders_image_replicas_resources_probes_and_hpa() -> None:
    manifest = render_seldon_deployment(
        image="ghcr.io/acme/penguins:1.2",
        name="penguins",
        namespace="models",
        replicas=3,
        max_replicas=6,
        cpu_request="500m",
        memory_limit="2Gi",
        workers=3,
        model=package_metadata(model_sha256=SHA, metrics={"f1_macro": 0.93, "accuracy": 0.95}),
        git_commit="c0ffee",
    )
    assert manifest["apiVersion"] == "machinelearning.seldon.io/v1"
    assert manifest["kind"] == "SeldonDeployment"
    assert manifest["metadata"]["name"] == "penguins"
    assert manifest["metadata"]["namespace"] == "models"
    assert manifest["metadata"]["annotations"]["mlops-template/model-sha256"] == SHA
    assert manifest["metadata"]["annotations"]["mlops-template/git-commit"] == "c0ffee"
    # What the deploy gate reads from the live object: the model's test metrics and test data.
    assert manifest["metadata"]["annotations"]["mlops-template/evaluation-data-sha256"] == "cd" * 32
    metrics = json.loads(manifest["metadata"]["annotations"]["mlops-template/metrics"])
    assert metrics == {"accuracy": 0.95, "f1_macro": 0.93}
    predictor = manifest["spec"]["predictors"][0]
    assert predictor["replicas"] == 3
    container = container_of(manifest)
    assert container["image"] == "ghcr.io/acme/penguins:1.2"
    assert container["resources"]["requests"]["cpu"] == "500m"
    assert container["resources"]["limits"]["memory"] == "2Gi"
    assert {"name": "GUNICORN_WORKERS", "value": "3"} in container["env"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/health/status", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health/ping", "port": "http"}
    # The pod label a canary's metrics are told apart by (the PodMonitor keeps it).
    labels = predictor["componentSpecs"][0]["metadata"]["labels"]
    assert labels == {"mlops-template/predictor": "default"}
    hpa = predictor["componentSpecs"][0]["hpaSpec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 6)
    assert hpa["metricsv2"][0]["resource"]["name"] == "cpu"
    # The graph node must name the container, or Seldon's operator serves nothing.
    assert predictor["graph"]["name"] == container["name"]
    assert predictor["graph"]["type"] == "MODEL"


def test_model_settings_travel_in_the_package_not_the_manifest() -> None:
    """One route for the batch limit: the package's metadata, not a Seldon graph parameter."""
    manifest = render_seldon_deployment(image="registry:5000/team/model@sha256:" + "0" * 64)
    assert "parameters" not in manifest["spec"]["predictors"][0]["graph"]


def test_yaml_round_trips_and_the_deploy_command_can_read_it(tmp_path: Path) -> None:
    manifest = render_seldon_deployment(image="localhost/model:abc", name="iris", namespace="ml")
    text = to_yaml(manifest)
    assert "&id" not in text  # no YAML anchors: kubectl users read this file
    assert yaml.safe_load(text) == manifest
    path = tmp_path / "seldon.yaml"
    path.write_text(text)
    target = target_of(read_manifest(path).seldon_deployment, str(path))
    assert (target.name, target.namespace, target.predictor) == ("iris", "ml", "default")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"image": ""}, r"image must not be empty"),
        ({"image": "   "}, r"image must not be empty"),
        ({"image": "Acme/Model:1"}, r"image 'Acme/Model:1' is not a valid image reference"),
        ({"image": "model:1 --privileged"}, r"is not a valid image reference"),
        ({"image": "model:"}, r"is not a valid image reference"),
        ({"replicas": 0}, r"replicas must be a whole number of at least 1, got 0"),
        ({"replicas": -2}, r"replicas must be a whole number of at least 1, got -2"),
        ({"replicas": 3, "max_replicas": 2}, r"max_replicas .* at least 3, got 2"),
        ({"namespace": "Models"}, r"namespace 'Models' is not a valid Kubernetes name"),
        ({"namespace": "my_models"}, r"namespace 'my_models' is not a valid Kubernetes name"),
        ({"namespace": ""}, r"namespace must not be empty"),
        ({"name": "-penguins"}, r"name '-penguins' is not a valid Kubernetes name"),
        ({"name": "p" * 64}, r"is not a valid Kubernetes name: use at most 63"),
        ({"cpu_request": "lots"}, r"cpu_request 'lots' is not a positive Kubernetes quantity"),
        ({"memory_limit": "0Gi"}, r"memory_limit '0Gi' is not a positive Kubernetes quantity"),
        ({"workers": 0}, r"workers must be a whole number of at least 1"),
    ],
)
def test_bad_arguments_are_user_errors(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError, match=message):
        render_seldon_deployment(**{"image": "localhost/model:1", **arguments})


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`mlops ...` as a user runs it."""
    command = [sys.executable, "-m", "mlops_template.cli", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)


def write_package(root: Path) -> Path:
    """A package directory with the metadata the command reads."""
    package = root / "serving"
    package.mkdir()
    package_metadata(model_sha256=SHA).write(package)
    return package


def test_cli_writes_the_manifest_with_the_package_identity(tmp_path: Path) -> None:
    package = write_package(tmp_path)
    out = tmp_path / "build" / "seldon.yaml"
    options = ["--image", "ghcr.io/acme/penguins:9", "--namespace", "prod", "--replicas", "2"]
    options += ["--git-commit", "c0ffee", "--no-monitoring"]
    done = run_cli("manifest", *options, "--package", str(package), "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    manifest = yaml.safe_load(out.read_text())
    assert container_of(manifest)["image"] == "ghcr.io/acme/penguins:9"
    assert manifest["metadata"]["namespace"] == "prod"
    assert manifest["metadata"]["annotations"] == {
        "mlops-template/model-sha256": SHA,
        "mlops-template/evaluation-data-sha256": "cd" * 32,
        "mlops-template/metrics": '{"accuracy": 0.9}',
        "mlops-template/git-commit": "c0ffee",
    }


@pytest.mark.parametrize(("options", "workers"), [([], "0"), (["--grpc"], "1")])
def test_the_grpc_server_is_off_unless_asked(tmp_path: Path, options: list[str], workers: str):
    # protobuf 3.20.3's pure-Python parser has a recursion advisory with no 3.x fix: the model's
    # gRPC server is not started unless the deployment asks for it (docs/serving.md).
    package = write_package(tmp_path)
    out = tmp_path / "seldon.yaml"
    args = ["--image", "ghcr.io/acme/penguins:9", "--no-monitoring", *options]
    done = run_cli("manifest", *args, "--package", str(package), "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    env = container_of(yaml.safe_load(out.read_text()))["env"]
    assert [e["value"] for e in env if e["name"] == "GRPC_WORKERS"] == [workers]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--image", ""], "error: image must not be empty"),
        (["--image", "x:1", "--replicas", "0"], "error: replicas must be a whole number"),
        (["--image", "x:1", "--namespace", "Prod"], "error: namespace 'Prod' is not a valid"),
        (["--image", "x:1", "--package", "missing"], "error: missing/metadata.json not found"),
        (["--image", "x:1", "--package", "."], "error: metadata.json not found"),
        (["--image", "x:1", "--monitoring-label", "release"], "error: --monitoring-label must"),
        (["--image", "x:1", "--params", "missing.yaml"], "error: missing.yaml: file not found"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2_and_no_file(
    tmp_path: Path, args: list[str], message: str
) -> None:
    package = write_package(tmp_path)
    out = tmp_path / "seldon.yaml"
    if "--package" not in args:
        args = [*args, "--package", str(package)]
    if "--params" not in args:
        args = [*args, "--params", str(REPO / "params.yaml")]
    done = run_cli("manifest", *args, "--out", str(out), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().startswith(message), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_package_manifest_names_the_model_and_no_commit() -> None:
    """The package's own manifest: the model's sha256, nothing that changes with each commit."""
    manifest = yaml.safe_load(package_manifest(package_metadata(model_sha256=SHA)))
    assert container_of(manifest)["image"] == "localhost/mlops-template-model:latest"
    assert manifest["metadata"]["annotations"] == {
        "mlops-template/model-sha256": SHA,
        "mlops-template/evaluation-data-sha256": "cd" * 32,
        "mlops-template/metrics": '{"accuracy": 0.9}',
    }
