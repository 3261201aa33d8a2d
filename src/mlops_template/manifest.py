"""`mlops manifest`: render the Seldon Core v1 SeldonDeployment that runs the serving image.

`render_seldon_deployment` is a pure function (arguments in, a dict out) called by this command,
by the package stage and, through the command, by the deploy workflow. Every argument is checked
before anything is rendered, so a bad value is one clear message and no file.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from mlops_template import monitoring
from mlops_template.errors import UserError
from mlops_template.params import DEFAULT_PARAMS
from mlops_template.serving import contract
from mlops_template.serving.contract import PackageMetadata

logger = logging.getLogger(__name__)

API_VERSION = "machinelearning.seldon.io/v1"
KIND = "SeldonDeployment"
CONTAINER = "classifier"
PREDICTOR = "default"
# `make image`'s default tag; the deploy workflow renders again with the pushed image.
PACKAGE_IMAGE = "localhost/mlops-template-model:latest"
# Ports the operator gives the model container (it sets PREDICTIVE_UNIT_*_PORT to match).
HTTP_PORT_NAME = "http"
TERMINATION_GRACE_SECONDS = 30  # above the entry point's 20 s wait before it SIGKILLs
# What runs, on the SeldonDeployment itself: `mlops deploy` reads these from the live object to
# decide whether a new model may replace it (docs/workflows.md, "The deploy gate").
ANNOTATION_MODEL_SHA256 = "mlops-template/model-sha256"
ANNOTATION_GIT_COMMIT = "mlops-template/git-commit"
ANNOTATION_DATA_SHA256 = "mlops-template/evaluation-data-sha256"
ANNOTATION_METRICS = "mlops-template/metrics"  # every test metric of the model, as JSON
# The pod label that tells a predictor's series apart in Prometheus (the PodMonitor keeps it).
PREDICTOR_LABEL = monitoring.PREDICTOR_LABEL

# Kubernetes object names and namespaces: RFC 1123 labels.
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# A container image reference: [registry[:port]/]path[:tag][@sha256:digest], lowercase path.
PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_REFERENCE = re.compile(
    rf"^(?:[a-zA-Z0-9.-]+(?::[0-9]+)?/)?{PATH_COMPONENT}(?:/{PATH_COMPONENT})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[a-f0-9]{64})?$"
)
# A Kubernetes resource quantity as people write them: 500m, 1, 1.5, 512Mi, 1Gi.
QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")


def check_dns_label(value: str, what: str) -> None:
    """Raise UserError unless `value` can name a Kubernetes object (RFC 1123 label)."""
    if not value:
        raise UserError(f"{what} must not be empty")
    if len(value) > 63 or not DNS_LABEL.match(value):
        raise UserError(
            f"{what} {value!r} is not a valid Kubernetes name: use at most 63 lowercase letters, "
            "digits and '-', starting and ending with a letter or digit"
        )


def check_image(image: str) -> None:
    """Raise UserError unless `image` is a usable image reference."""
    if not image or not image.strip():
        raise UserError("image must not be empty: pass --image REGISTRY/NAME:TAG")
    if not IMAGE_REFERENCE.match(image):
        raise UserError(
            f"image {image!r} is not a valid image reference: expected "
            "[REGISTRY/]NAME[:TAG][@sha256:DIGEST] with a lowercase NAME and no spaces"
        )


def check_quantity(value: str, what: str) -> None:
    """Raise UserError unless `value` is a Kubernetes quantity such as 500m or 512Mi."""
    if not QUANTITY.match(value) or float(re.sub(r"[A-Za-z]+$", "", value)) <= 0:
        raise UserError(
            f"{what} {value!r} is not a positive Kubernetes quantity (e.g. 500m, 1, 512Mi)"
        )


def check_at_least(value: int, minimum: int, what: str) -> None:
    """Raise UserError unless `value` is an int of at least `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{what} must be a whole number of at least {minimum}, got {value!r}")


@dataclass(frozen=True)
class Settings:
    """What a SeldonDeployment is rendered with, and the defaults of `mlops manifest`'s options."""

    name: str = "classifier"
    namespace: str = "default"
    replicas: int = 2  # the HPA's minimum
    max_replicas: int = 4  # the HPA's maximum
    cpu_request: str = "1"
    cpu_limit: str = "2"
    memory_request: str = "512Mi"
    memory_limit: str = "1Gi"
    target_cpu_utilization: int = 70  # the HPA's target, percent of the request
    workers: int = 2  # gunicorn workers per pod, one per core of cpu_limit
    threads: int = 1  # threads per gunicorn worker
    grpc: bool = False


DEFAULTS = Settings()


def render_seldon_deployment(
    image: str,
    name: str = DEFAULTS.name,
    namespace: str = DEFAULTS.namespace,
    replicas: int = DEFAULTS.replicas,
    max_replicas: int = DEFAULTS.max_replicas,
    cpu_request: str = DEFAULTS.cpu_request,
    cpu_limit: str = DEFAULTS.cpu_limit,
    memory_request: str = DEFAULTS.memory_request,
    memory_limit: str = DEFAULTS.memory_limit,
    target_cpu_utilization: int = DEFAULTS.target_cpu_utilization,
    workers: int = DEFAULTS.workers,
    threads: int = DEFAULTS.threads,
    model: PackageMetadata | None = None,
    git_commit: str | None = None,
    grpc: bool = DEFAULTS.grpc,
) -> dict[str, Any]:
    """Build a SeldonDeployment (v1) for the serving image; raise UserError on a bad argument.

    The model's gRPC server is off unless `grpc`: seldon-core 1.17.1 needs protobuf 3.x, whose
    pure-Python parser has a recursion advisory with no 3.x fix (docs/serving.md, "Known
    advisories"), and the graph talks REST.
    """
    check_image(image)
    check_dns_label(name, "name")
    check_dns_label(namespace, "namespace")
    check_at_least(replicas, 1, "replicas")
    check_at_least(max_replicas, replicas, "max_replicas (the HPA's ceiling, >= replicas)")
    check_at_least(target_cpu_utilization, 1, "target_cpu_utilization")
    check_at_least(workers, 1, "workers")
    check_at_least(threads, 1, "threads")
    for value, what in (
        (cpu_request, "cpu_request"),
        (cpu_limit, "cpu_limit"),
        (memory_request, "memory_request"),
        (memory_limit, "memory_limit"),
    ):
        check_quantity(value, what)

    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "mlops-template"}
    annotations = model_annotations(model) if model else {}
    if model:
        labels["app.kubernetes.io/version"] = model.model_sha256[:12]
    if git_commit:
        annotations[ANNOTATION_GIT_COMMIT] = git_commit
    container = {
        "name": CONTAINER,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "env": [
            {"name": "GUNICORN_WORKERS", "value": str(workers)},
            {"name": "GUNICORN_THREADS", "value": str(threads)},
            # 0: Seldon's microservice starts no gRPC server at all.
            {"name": "GRPC_WORKERS", "value": "1" if grpc else "0"},
        ],
        "resources": {
            "requests": {"cpu": cpu_request, "memory": memory_request},
            "limits": {"cpu": cpu_limit, "memory": memory_limit},
        },
        # Ready only once a prediction works (/health/status runs the model on one row);
        # alive as long as the web server answers at all.
        "readinessProbe": {
            "httpGet": {"path": "/health/status", "port": HTTP_PORT_NAME},
            "initialDelaySeconds": 5,
            "periodSeconds": 5,
            "timeoutSeconds": 3,
            "failureThreshold": 3,
        },
        "livenessProbe": {
            "httpGet": {"path": "/health/ping", "port": HTTP_PORT_NAME},
            "initialDelaySeconds": 30,
            "periodSeconds": 10,
            "timeoutSeconds": 3,
            "failureThreshold": 3,
        },
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    # Settings of the model itself (the batch limit) travel in the package's metadata only.
    graph = {"name": CONTAINER, "type": "MODEL", "endpoint": {"type": "REST"}}
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels)}
    if annotations:
        metadata["annotations"] = annotations
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": metadata,
        "spec": {
            "protocol": "seldon",
            "predictors": [
                {
                    "name": PREDICTOR,
                    "replicas": replicas,
                    "labels": dict(labels),  # a copy, or YAML prints an anchor
                    "componentSpecs": [
                        {
                            "metadata": {"labels": {PREDICTOR_LABEL: PREDICTOR}},
                            "spec": {
                                "containers": [container],
                                "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
                            },
                            "hpaSpec": {
                                "minReplicas": replicas,
                                "maxReplicas": max_replicas,
                                "metricsv2": [
                                    {
                                        "type": "Resource",
                                        "resource": {
                                            "name": "cpu",
                                            "target": {
                                                "type": "Utilization",
                                                "averageUtilization": target_cpu_utilization,
                                            },
                                        },
                                    }
                                ],
                            },
                        }
                    ],
                    "graph": graph,
                }
            ],
        },
    }


def model_annotations(model: PackageMetadata) -> dict[str, str]:
    """The annotations that say which model runs, how it scored, and on which test data."""
    import json

    return {
        ANNOTATION_MODEL_SHA256: model.model_sha256,
        ANNOTATION_DATA_SHA256: model.evaluation_data_sha256,
        ANNOTATION_METRICS: json.dumps(dict(model.metrics), sort_keys=True),
    }


def to_yaml(manifest: dict[str, Any] | list[dict[str, Any]]) -> str:
    """The manifest (or several objects, as YAML documents), keys in the order written."""
    import yaml

    documents = manifest if isinstance(manifest, list) else [manifest]
    return yaml.safe_dump_all(documents, sort_keys=False, default_flow_style=False, width=100)


def parse_label(text: str) -> dict[str, str]:
    """`KEY=VALUE` as a one-label selector; UserError unless both parts are there."""
    key, equals, value = text.partition("=")
    if not equals or not key.strip() or not value.strip():
        raise UserError(f"--monitoring-label must be KEY=VALUE, got {text!r}")
    return {key.strip(): value.strip()}


def package_manifest(metadata: PackageMetadata, image: str = PACKAGE_IMAGE) -> str:
    """The manifest the package stage writes beside the model, for the locally built image.

    No commit in it: the package's bytes must not change from one commit to the next.
    """
    return to_yaml(render_seldon_deployment(image=image, model=metadata))


def read_package(package_dir: Path) -> PackageMetadata:
    """The validated metadata of a serving package, or UserError saying what is wrong."""
    try:
        return PackageMetadata.read(package_dir)
    except contract.ContractError as error:
        raise UserError(f"{error} (pass --package DIR for another package)") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the command's options."""
    parser.add_argument("--image", required=True, help="image reference, e.g. ghcr.io/ORG/REPO:TAG")
    parser.add_argument("--name", default=DEFAULTS.name, help="SeldonDeployment name")
    parser.add_argument("--namespace", default=DEFAULTS.namespace, help="Kubernetes namespace")
    parser.add_argument(
        "--replicas", type=int, default=DEFAULTS.replicas, help="replicas (the HPA's minimum)"
    )
    parser.add_argument(
        "--max-replicas", type=int, default=DEFAULTS.max_replicas, help="the HPA's maximum"
    )
    parser.add_argument("--cpu-request", default=DEFAULTS.cpu_request)
    parser.add_argument("--cpu-limit", default=DEFAULTS.cpu_limit)
    parser.add_argument("--memory-request", default=DEFAULTS.memory_request)
    parser.add_argument("--memory-limit", default=DEFAULTS.memory_limit)
    parser.add_argument(
        "--target-cpu-utilization",
        type=int,
        default=DEFAULTS.target_cpu_utilization,
        help="HPA target, percent of request",
    )
    parser.add_argument(
        "--workers", type=int, default=DEFAULTS.workers, help="gunicorn workers per pod"
    )
    parser.add_argument(
        "--threads", type=int, default=DEFAULTS.threads, help="threads per gunicorn worker"
    )
    parser.add_argument(
        "--package",
        type=Path,
        default=contract.DEFAULT_DIR,
        help="serving package whose model sha256, test metrics and test-data hash are recorded "
        "as annotations (default: %(default)s)",
    )
    parser.add_argument(
        "--git-commit",
        metavar="SHA",
        help="the commit the image was built from, recorded as an annotation",
    )
    parser.add_argument(
        "--monitoring",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also render the PodMonitor, PrometheusRule and Grafana dashboard ConfigMap "
        "(needs kube-prometheus-stack's CRDs in the cluster; default: on)",
    )
    parser.add_argument(
        "--monitoring-label",
        default="release=kube-prometheus-stack",
        metavar="KEY=VALUE",
        help="the label Prometheus selects PodMonitors and PrometheusRules by "
        "(default: %(default)s, kube-prometheus-stack's Helm release)",
    )
    parser.add_argument(
        "--grpc",
        action=argparse.BooleanOptionalAction,
        default=DEFAULTS.grpc,
        help="also start the model's gRPC server (default: off; protobuf 3.x advisory, "
        "docs/serving.md)",
    )
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params file")
    parser.add_argument("--out", type=Path, help="file to write (default: standard output)")


def run(args: argparse.Namespace) -> int:
    """Entry point for `mlops manifest`."""
    from mlops_template.files import write_text

    metadata = read_package(args.package)
    chosen = {setting.name: getattr(args, setting.name) for setting in fields(Settings)}
    manifest = render_seldon_deployment(
        image=args.image, model=metadata, git_commit=args.git_commit, **chosen
    )
    documents = [manifest]
    if args.monitoring:
        from mlops_template.params import load_params, monitoring_params

        limits = monitoring_params(load_params(args.params))
        selector = parse_label(args.monitoring_label)
        documents += monitoring.kubernetes_objects(args.name, args.namespace, limits, selector)
    text = to_yaml(documents)
    if args.out is None:
        sys.stdout.write(text)
    else:
        write_text(args.out, text)
        logger.info("wrote %s/%s for %s to %s", KIND, args.name, args.image, args.out)
    return 0
