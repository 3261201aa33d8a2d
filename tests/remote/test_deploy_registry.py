"""`mlops deploy` keeps the MLflow registry in step, against the real MLflow server.

The cluster is the kubectl stand-in of tests/test_deploy.py (no cluster can run here); the
registry is the session's real `mlflow server`. Two model versions are registered, deployed in
turn with `--environment production`, then the first is deployed again by its registry alias.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from mlops_template import tracking
from mlops_template.registry import DEPLOYED_ANNOTATIONS_TAG, DEPLOYED_IMAGE_TAG
from tests.remote.conftest import MLflowServer
from tests.test_deploy import NEW_IMAGE, NEW_SHA, OLD_IMAGE, OLD_SHA, Cluster, manifest_text

pytestmark = pytest.mark.remote

MODEL = "deploy-registry-test"


def registered(client: MlflowClient, sha: str, name: str = MODEL) -> str:
    """A version of `name` holding the model with this sha256 (as `mlops register` tags it).

    The registry only records where the files are; deploying never reads them.
    """
    source = f"s3://not-read/{sha[:8]}"
    return client.create_model_version(name, source, tags={tracking.MODEL_SHA256_TAG: sha}).version


def test_deploys_move_the_environment_alias_and_a_rollback_by_alias_redeploys(
    mlflow_server: MLflowServer, tmp_path: Path
) -> None:
    client = MlflowClient(mlflow_server.url)
    client.create_registered_model(MODEL)
    old_version, new_version = registered(client, OLD_SHA), registered(client, NEW_SHA)
    cluster = Cluster(tmp_path)
    cluster.params.write_text(
        cluster.params.read_text().replace("model_name: penguins-species", f"model_name: {MODEL}")
    )
    cluster.env["MLFLOW_TRACKING_URI"] = mlflow_server.url
    production = ("--environment", "production")

    cluster.manifest.write_text(manifest_text(OLD_IMAGE, OLD_SHA, f1=0.90))
    first = cluster.deploy(*production)
    assert first.returncode == 0, first.stderr
    assert client.get_model_version_by_alias(MODEL, "production").version == old_version
    tags = client.get_model_version(MODEL, old_version).tags
    assert tags[DEPLOYED_IMAGE_TAG] == OLD_IMAGE
    assert OLD_SHA in tags[DEPLOYED_ANNOTATIONS_TAG]

    cluster.manifest.write_text(manifest_text(NEW_IMAGE, NEW_SHA, f1=0.95))
    second = cluster.deploy(*production)
    assert second.returncode == 0, second.stderr
    assert client.get_model_version_by_alias(MODEL, "production").version == new_version
    assert client.get_model_version_by_alias(MODEL, "production-previous").version == old_version
    assert cluster.summary_lines()[-1] == (
        f"- registry: {MODEL} alias 'production' -> version {new_version}, "
        f"'production-previous' -> version {old_version}"
    )

    # Back to the earlier model by its alias: its image and annotations, whatever the manifest
    # says, and no metric gate (it is worse).
    back = cluster.deploy(*production, "--rollback-to", "production-previous")
    assert back.returncode == 0, back.stderr
    assert cluster.live_images() == [("default", OLD_IMAGE, None)]
    annotations = cluster.live()["metadata"]["annotations"]
    assert annotations["mlops-template/model-sha256"] == OLD_SHA
    assert annotations["mlops-template/rolled-back-to"] == (
        f"production-previous (version {old_version})"
    )
    assert client.get_model_version_by_alias(MODEL, "production").version == old_version
    assert client.get_model_version_by_alias(MODEL, "production-previous").version == new_version

    # By version number; a version never deployed has no image to deploy.
    again = cluster.deploy(*production, "--rollback-to", new_version)
    assert again.returncode == 0, again.stderr
    assert cluster.live_images() == [("default", NEW_IMAGE, None)]
    never = registered(client, "4" * 64)
    refused = cluster.deploy(*production, "--rollback-to", never)
    assert refused.returncode == 2
    assert f"version {never} of {MODEL} was never deployed by `mlops deploy`" in refused.stderr
    unknown = cluster.deploy(*production, "--rollback-to", "nightly")
    assert unknown.returncode == 2
    assert f"--rollback-to nightly: {MODEL} has no such alias or version" in unknown.stderr


def test_a_failed_deploy_leaves_the_alias_on_the_live_model(
    mlflow_server: MLflowServer, tmp_path: Path
) -> None:
    client = MlflowClient(mlflow_server.url)
    name = MODEL + "-failed"
    client.create_registered_model(name)
    old_version = registered(client, OLD_SHA, name)
    registered(client, NEW_SHA, name)
    cluster = Cluster(tmp_path)
    cluster.params.write_text(
        cluster.params.read_text().replace("model_name: penguins-species", f"model_name: {name}")
    )
    cluster.env["MLFLOW_TRACKING_URI"] = mlflow_server.url
    cluster.existing()
    cluster.env["FAKE_KUBECTL_BROKEN_IMAGES"] = NEW_IMAGE
    done = cluster.deploy("--environment", "staging")
    assert done.returncode == 1
    assert client.get_model_version_by_alias(name, "staging").version == old_version
    assert cluster.summary_lines()[-1] == (
        f"- registry: {name} alias 'staging' -> version {old_version}"
    )
