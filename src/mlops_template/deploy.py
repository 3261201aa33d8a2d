"""`mlops deploy`: replace the live model only by one that is new and no worse, and check it serves.

The decisions live here (not in the workflow) so they are tested locally with a `kubectl`
stand-in; the deploy workflow only renders the manifest and calls this command.

Order of events:
1. read the manifest and the live SeldonDeployment's annotations (`kubectl get`): which model
   runs, its test metrics and the hash of the test data they were computed on;
2. the gate (params.yaml `deploy.gate`): the same model is "already running" and nothing is
   applied; a model worse on the gate metric, or scored on other test data, is refused (exit 4)
   unless forced, and a forced deploy says so in an annotation; a dry run stops here;
3. save what `kubectl apply` last applied to the live object: the rollback target;
4. with `--canary`, apply the live predictor and the new one side by side (Seldon's traffic
   weights), send it smoke requests through an observation window and judge it (by Prometheus
   when a URL is given), then promote it or remove it;
5. `kubectl apply` the new manifest, wait until Seldon reports it `Available` and its Deployments
   have rolled out, send the sample request through the cluster, optionally a load test;
6. on any failure: re-apply the previous manifest and wait for it, or, on a first deploy, delete
   the new SeldonDeployment; exit non-zero;
7. with an MLflow server configured, point the environment's registry alias at the version that
   now runs (see `registry.record_deploy`).
Every outcome is one line in the log and, on GitHub Actions, in the job summary.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlops_template import manifest as rendering
from mlops_template.errors import UserError
from mlops_template.evaluate import HIGHER_IS_BETTER
from mlops_template.params import (
    DEFAULT_PARAMS,
    CanaryParams,
    GateParams,
    LoadTestParams,
    MonitoringParams,
)
from mlops_template.processes import HOST, free_port, stop
from mlops_template.serving import contract

logger = logging.getLogger(__name__)

KIND = "SeldonDeployment"
RESOURCE = "seldondeployment"
# Seldon Core v1 puts an executor in front of every predictor, behind a Service named
# <deployment>-<predictor> that speaks the v1 REST protocol on this port.
EXECUTOR_HTTP_PORT = 8000
# Exit codes: 2 is the CLI's code for a user error (bad manifest, missing file).
EXIT_OK = 0  # deployed, promoted, already running, or a dry run the gate would pass
EXIT_ROLLED_BACK = 1  # failed, and the live version is back (or nothing was applied)
EXIT_ROLLBACK_FAILED = 3
EXIT_REFUSED = 4  # the gate refused the new model
PORT_FORWARD_SECONDS = 30
CANARY = "canary"
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
ANNOTATION_FORCED = "mlops-template/forced"  # why the gate refused, when --force overrode it
ANNOTATION_ROLLBACK = "mlops-template/rolled-back-to"
ANNOTATION_CANARY_SHA256 = "mlops-template/canary-model-sha256"
# What `mlops manifest` records about the model; a registry version keeps them for a rollback.
MODEL_ANNOTATIONS = (
    rendering.ANNOTATION_MODEL_SHA256,
    rendering.ANNOTATION_DATA_SHA256,
    rendering.ANNOTATION_METRICS,
    rendering.ANNOTATION_GIT_COMMIT,
)
PROMETHEUS_SECONDS = 10


@dataclass(frozen=True)
class Target:
    """The SeldonDeployment a manifest describes."""

    name: str
    namespace: str
    predictor: str

    @property
    def resource(self) -> str:
        """`kind/name` as kubectl takes it."""
        return f"{RESOURCE}/{self.name}"

    @property
    def predictions_path(self) -> str:
        """API server proxy path to the executor's v1 predictions endpoint."""
        service = f"{self.name}-{self.predictor}"
        return (
            f"/api/v1/namespaces/{self.namespace}/services/{service}:{EXECUTOR_HTTP_PORT}"
            "/proxy/api/v1.0/predictions"
        )


class StepFailed(Exception):
    """A deploy step failed; the message says which and why."""


@dataclass
class Manifest:
    """A rendered manifest: its YAML documents, one of them the SeldonDeployment."""

    path: Path
    documents: list[dict[str, Any]]
    index: int

    @property
    def seldon_deployment(self) -> dict[str, Any]:
        """The SeldonDeployment document (changes to it are written by `write`)."""
        return self.documents[self.index]

    @property
    def annotations(self) -> dict[str, str]:
        """The SeldonDeployment's annotations (a live view: setting one changes the manifest)."""
        return self.seldon_deployment["metadata"].setdefault("annotations", {})

    def write(self, path: Path) -> Path:
        """Write the documents to `path`; return it."""
        from mlops_template.manifest import to_yaml

        path.write_text(to_yaml(self.documents), encoding="utf-8")
        return path


def read_manifest(manifest: Path) -> Manifest:
    """Read a manifest holding one SeldonDeployment; UserError if it is unusable."""
    import yaml

    try:
        documents = [doc for doc in yaml.safe_load_all(manifest.read_text("utf-8")) if doc]
    except FileNotFoundError:
        raise UserError(
            f"manifest {manifest} does not exist (render it with `mlops manifest`)"
        ) from None
    except yaml.YAMLError as error:
        raise UserError(f"manifest {manifest} is not valid YAML: {error}".splitlines()[0]) from None
    found = [
        index
        for index, doc in enumerate(documents)
        if isinstance(doc, dict) and doc.get("kind") == KIND
    ]
    if len(found) != 1:
        raise UserError(f"manifest {manifest} must hold exactly one {KIND}, found {len(found)}")
    parsed = Manifest(manifest, documents, found[0])
    target_of(parsed.seldon_deployment, f"manifest {manifest}")
    return parsed


def target_of(document: dict[str, Any], where: str) -> Target:
    """Name, namespace and first predictor of a SeldonDeployment; UserError if one is missing."""
    metadata = document.get("metadata") or {}
    predictors = (document.get("spec") or {}).get("predictors") or []
    name, namespace = metadata.get("name"), metadata.get("namespace")
    predictor = (
        predictors[0].get("name") if predictors and isinstance(predictors[0], dict) else None
    )
    for field, value in (
        ("metadata.name", name),
        ("metadata.namespace", namespace),
        ("spec.predictors[0].name", predictor),
    ):
        if not isinstance(value, str) or not value:
            raise UserError(f"{where} has no {field}")
    return Target(name=name, namespace=namespace, predictor=predictor)


def request_rows(request: Path) -> int:
    """Number of rows in a Seldon v1 `{"data": {"ndarray": [...]}}` request file."""
    try:
        payload = json.loads(request.read_text("utf-8"))
        rows = payload["data"]["ndarray"]
    except FileNotFoundError:
        raise UserError(f"smoke request {request} does not exist (run `dvc repro` first)") from None
    except (ValueError, KeyError, TypeError):
        raise UserError(f"smoke request {request} is not a Seldon data.ndarray request") from None
    if not isinstance(rows, list) or not rows:
        raise UserError(f"smoke request {request} has no rows in data.ndarray")
    return len(rows)


def check_prediction(answer: str, expected_rows: int) -> None:
    """Raise StepFailed unless `answer` is a v1 response with one numeric row per request row."""
    try:
        rows = json.loads(answer)["data"]["ndarray"]
    except (ValueError, KeyError, TypeError):
        raise StepFailed(
            f"smoke request: answer is not a Seldon prediction: {answer[:200]!r}"
        ) from None
    if not isinstance(rows, list) or len(rows) != expected_rows:
        count = len(rows) if isinstance(rows, list) else "no"
        raise StepFailed(f"smoke request: expected {expected_rows} predictions, got {count}")
    for row in rows:
        values = row if isinstance(row, list) else [row]
        if not all(isinstance(value, int | float) for value in values):
            raise StepFailed(f"smoke request: prediction row is not numeric: {row!r}")


class Kubectl:
    """Runs kubectl with a time limit; every call is logged (never the kubeconfig)."""

    def __init__(self, binary: str, env: dict[str, str]) -> None:
        """Use `binary` (found on PATH) with the given environment."""
        path = shutil.which(binary, path=env.get("PATH"))
        if path is None:
            raise UserError(f"{binary} not found on PATH")
        self.binary = path
        self.env = env

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run one kubectl command and return it, whatever its exit code."""
        logger.info("kubectl %s", " ".join(args))
        try:
            return subprocess.run(
                [self.binary, *args],
                capture_output=True,
                text=True,
                env=self.env,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(
                [self.binary, *args], 124, "", f"kubectl gave no answer in {timeout:.0f} s"
            )

    def check(self, step: str, *args: str, timeout: float = 60) -> str:
        """Run kubectl; raise StepFailed naming `step` if it fails; return its output."""
        done = self.run(*args, timeout=timeout)
        if done.returncode != 0:
            reason = (done.stderr or done.stdout).strip().splitlines()
            raise StepFailed(f"{step} failed: {reason[-1] if reason else 'no output'}")
        return done.stdout


@contextlib.contextmanager
def kubeconfig_from(variable: str | None, env: dict[str, str]) -> Iterator[dict[str, str]]:
    """Yield `env` with KUBECONFIG pointing at a private copy of `$variable`, removed afterwards.

    The value may be the kubeconfig YAML or its base64 encoding (as many guides store it).
    The file lives in a fresh 0700 directory with mode 0600 and exists only for this command.
    """
    if not variable:
        yield env
        return
    value = env.get(variable, "")
    if not value.strip():
        raise UserError(f"environment variable {variable} is empty: set the kubeconfig secret")
    if ":" not in value:  # base64 has no colons, YAML always does
        try:
            value = base64.b64decode(value, validate=False).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise UserError(f"{variable} is neither a kubeconfig nor base64 of one") from None
    directory = Path(tempfile.mkdtemp(prefix="kubeconfig-"))
    path = directory / "config"
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(value)
        yield {**env, "KUBECONFIG": str(path)}
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@dataclass(frozen=True)
class Live:
    """The live SeldonDeployment: its annotations, its predictors, its last applied manifest."""

    annotations: dict[str, str]
    predictors: tuple[str, ...]
    last_applied: dict[str, Any] | None

    @property
    def model_sha256(self) -> str | None:
        """The sha256 of the model that runs, if the live object records it."""
        return self.annotations.get(rendering.ANNOTATION_MODEL_SHA256)


def read_live(kubectl: Kubectl, target: Target) -> Live | None:
    """The live SeldonDeployment `target` names, or None if there is none."""
    found = kubectl.check(
        "looking up the live deployment",
        "get",
        target.resource,
        "--namespace",
        target.namespace,
        "--ignore-not-found",
        "--output=json",
    )
    if not found.strip():
        return None
    try:
        live = json.loads(found)
        annotations = dict(live.get("metadata", {}).get("annotations") or {})
        predictors = tuple(p.get("name", "") for p in live.get("spec", {}).get("predictors", []))
    except (ValueError, AttributeError, TypeError):
        raise StepFailed(f"kubectl get {target.resource} did not answer a JSON object") from None
    last_applied = annotations.pop(LAST_APPLIED, None)
    try:
        applied = json.loads(last_applied) if last_applied else None
    except ValueError:
        applied = None
    return Live(annotations, predictors, applied if isinstance(applied, dict) else None)


def save_previous(live: Live | None, target: Target, destination: Path) -> Path | None:
    """Save the manifest last applied to the live deployment; None on a first deploy.

    A canary left by an interrupted deploy is not part of it: the rollback target has one
    predictor, the live one.
    """
    if live is None:
        return None
    if live.last_applied is None:
        raise UserError(
            f"{target.resource} exists in {target.namespace} but was not created by "
            "`kubectl apply`, so there is no manifest to roll back to; apply it once by hand"
        )
    from mlops_template.manifest import to_yaml

    destination.write_text(to_yaml(without_canary(live.last_applied)), encoding="utf-8")
    logger.info("saved the current manifest to %s (the rollback target)", destination)
    return destination


# --- the gate ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """What the gate decided, and the line that says why."""

    outcome: str  # DEPLOY, RUNNING or REFUSED
    line: str
    forced: str = ""  # the refusal --force overrode, recorded on the deployment


DEPLOY, RUNNING, REFUSED = "deploy", "already running", "refused"


def metrics_of(annotations: dict[str, str]) -> dict[str, float] | None:
    """The test metrics an annotation records, or None if it is absent or unreadable."""
    try:
        metrics = json.loads(annotations.get(rendering.ANNOTATION_METRICS, ""))
    except ValueError:
        return None
    return metrics if isinstance(metrics, dict) else None


def gate_improves_upwards(gate: GateParams) -> bool:
    """Whether a higher gate metric is better, as evaluate.HIGHER_IS_BETTER says beside the
    metric's definition; UserError for a metric the pipeline does not compute."""
    upwards = HIGHER_IS_BETTER.get(gate.metric)
    if upwards is None:
        raise UserError(
            f"params.yaml: deploy.gate.metric must name a test metric (metrics.json), got "
            f"{gate.metric!r}; the metrics are {', '.join(HIGHER_IS_BETTER)}"
        )
    return upwards


def compare(candidate: dict[str, str], live: dict[str, str], gate: GateParams) -> tuple[bool, str]:
    """(no worse?, why): the new model's gate metric against the live one's, on the same data."""
    metric = gate.metric
    new_metrics = metrics_of(candidate) or {}
    if metric not in new_metrics:
        raise UserError(
            f"params.yaml: deploy.gate.metric '{metric}' is not among the new model's test "
            f"metrics ({', '.join(sorted(new_metrics)) or 'none in the manifest'}); render the "
            "manifest with `mlops manifest`"
        )
    new_data = candidate.get(rendering.ANNOTATION_DATA_SHA256, "")
    live_data = live.get(rendering.ANNOTATION_DATA_SHA256)
    live_value = (metrics_of(live) or {}).get(metric)
    if not live_data or live_value is None:
        return False, (
            f"the live model does not record its {metric} and test-data hash (deployed before "
            "the gate, or by hand), so the new one cannot be compared with it"
        )
    if live_data != new_data:
        return False, (
            f"the models were scored on different test data (live {live_data[:12]}, new "
            f"{new_data[:12]}), so their {metric} values do not compare"
        )
    new_value = float(new_metrics[metric])
    if gate_improves_upwards(gate):
        worse = new_value < live_value - gate.tolerance
    else:
        worse = new_value > live_value + gate.tolerance
    versus = f"{metric} {new_value:g} against the live model's {live_value:g}"
    if worse:
        return False, f"{versus} is worse by more than the tolerance {gate.tolerance:g}"
    return True, f"{versus}: no worse"


def decide(
    candidate: dict[str, str], live: Live | None, gate: GateParams, *, force: bool, rollback: str
) -> Decision:
    """The gate: deploy, 'already running', or refused (unless forced)."""
    new_sha = candidate.get(rendering.ANNOTATION_MODEL_SHA256)
    if not new_sha:
        raise UserError(
            f"the manifest has no {rendering.ANNOTATION_MODEL_SHA256} annotation; render it "
            "with `mlops manifest`, which reads the serving package"
        )
    if live is None:
        return Decision(DEPLOY, f"first deploy of model {new_sha[:12]}")
    if live.model_sha256 == new_sha:
        return Decision(RUNNING, f"model {new_sha[:12]} is already running: nothing applied")
    if rollback:
        return Decision(DEPLOY, f"rollback to {rollback}: model {new_sha[:12]}")
    no_worse, why = compare(candidate, live.annotations, gate)
    if no_worse:
        return Decision(DEPLOY, f"model {new_sha[:12]} passes the gate: {why}")
    if force:
        return Decision(DEPLOY, f"model {new_sha[:12]} deployed by force: {why}", forced=why)
    return Decision(
        REFUSED,
        f"refused model {new_sha[:12]}: {why}; deploy it anyway with --force (the workflow's "
        "force input)",
    )


def summarize(line: str, *, error: bool = False) -> None:
    """Log one outcome line and add it to the GitHub Actions job summary, if there is one."""
    (logger.error if error else logger.info)("%s", line)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as handle:
            handle.write(f"- {line}\n")


def wait_available(kubectl: Kubectl, target: Target, timeout: float) -> None:
    """Wait, within `timeout` seconds overall, for Seldon's Available state and the rollout."""
    deadline = time.monotonic() + timeout
    scope = ("--namespace", target.namespace)
    kubectl.check(
        "waiting for the deployment",
        "wait",
        target.resource,
        *scope,
        "--for=jsonpath={.status.state}=Available",
        f"--timeout={int(timeout)}s",
        timeout=timeout + 30,
    )
    # The state can still say Available from the old version; the rollout of Seldon's
    # Deployments is what shows the new pods are ready.
    left = max(1, int(deadline - time.monotonic()))
    kubectl.check(
        "waiting for the rollout",
        "rollout",
        "status",
        "deployment",
        *scope,
        f"--selector=seldon-deployment-id={target.name}",
        f"--timeout={left}s",
        timeout=left + 30,
    )


def smoke_test(
    kubectl: Kubectl, target: Target, request: Path, attempts: int, interval: float
) -> None:
    """POST the sample request through the API server proxy; retry while endpoints settle."""
    expected = request_rows(request)
    failure = StepFailed("smoke request was not sent")
    for attempt in range(1, attempts + 1):
        try:
            answer = kubectl.check(
                "smoke request", "create", "--raw", target.predictions_path, "-f", str(request)
            )
            check_prediction(answer, expected)
        except StepFailed as error:
            failure = error
            logger.warning("attempt %d/%d: %s", attempt, attempts, error)
            if attempt < attempts:
                time.sleep(interval)
            continue
        logger.info("smoke request answered with %d predictions", expected)
        return
    raise failure


def roll_back(
    kubectl: Kubectl, target: Target, manifest: Path, previous: Path | None, timeout: float
) -> int:
    """Restore the previous manifest (or remove a failed first deploy); return the exit code."""
    scope = ("--namespace", target.namespace)
    try:
        if previous is None:
            kubectl.check(
                "removing the failed first deploy",
                "delete",
                "-f",
                str(manifest),
                *scope,
                "--ignore-not-found",
                "--wait=false",
            )
            logger.error(
                "first deploy of %s failed and there was no earlier version to roll back to: "
                "removed it from %s",
                target.resource,
                target.namespace,
            )
            return EXIT_ROLLED_BACK
        kubectl.check("rolling back", "apply", "-f", str(previous), *scope)
        wait_available(kubectl, target, timeout)
    except StepFailed as error:
        logger.error("%s; %s needs a manual look", error, target.resource)
        return EXIT_ROLLBACK_FAILED
    logger.error("deploy failed; rolled back %s to the previous manifest", target.resource)
    return EXIT_ROLLED_BACK


@dataclass(frozen=True)
class LoadTest:
    """A load test through the cluster after the smoke request (`mlops load-test` settings)."""

    params: LoadTestParams
    locustfile: Path
    rows: Path
    out: Path


def forwarded_port(target: Target) -> tuple[list[str], int]:
    """The `kubectl port-forward` arguments to the predictor's Service, and the local port."""
    port = free_port()
    service = f"service/{target.name}-{target.predictor}"
    arguments = ["port-forward", service, f"{port}:{EXECUTOR_HTTP_PORT}", "--address", HOST]
    return [*arguments, "--namespace", target.namespace], port


def load_test_through_cluster(kubectl: Kubectl, target: Target, settings: LoadTest) -> None:
    """Port-forward to the predictor's Service, run the Locust scenario; StepFailed on failure."""
    import socket

    from mlops_template.loadtest import load_test

    arguments, port = forwarded_port(target)
    logger.info("kubectl %s", " ".join(arguments))
    forward = subprocess.Popen(
        [kubectl.binary, *arguments],
        env=kubectl.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + PORT_FORWARD_SECONDS
        while True:
            if forward.poll() is not None:
                reason = forward.stderr.read().decode(errors="replace").strip().splitlines()
                raise StepFailed(f"port-forward failed: {reason[-1] if reason else 'it exited'}")
            with socket.socket() as probe:
                if probe.connect_ex((HOST, port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise StepFailed(f"port-forward gave no port within {PORT_FORWARD_SECONDS} s")
            time.sleep(0.2)
        code = load_test(
            f"http://{HOST}:{port}", settings.params, settings.locustfile, settings.out,
            settings.rows,
        )  # fmt: skip
    finally:
        stop(forward.pid)
        forward.wait()
    if code != 0:
        raise StepFailed(f"load test failed (report: {settings.out}.html)")
    logger.info("load test passed (report: %s.html)", settings.out)


# --- the canary -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CanaryPlan:
    """How the new model is tried beside the live one before it replaces it."""

    params: CanaryParams
    limits: MonitoringParams  # the 5xx ratio and p99 latency it must stay within
    prometheus_url: str | None


def containers_of(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The containers of a SeldonDeployment's first predictor."""
    predictor = document["spec"]["predictors"][0]
    return [
        container
        for component in predictor.get("componentSpecs") or []
        for container in (component.get("spec") or {}).get("containers") or []
    ]


def image_of(document: dict[str, Any]) -> str:
    """The model container's image in a SeldonDeployment."""
    containers = containers_of(document)
    named = [c for c in containers if c.get("name") == rendering.CONTAINER] or containers
    if not named or not named[0].get("image"):
        raise UserError(f"the {KIND} names no container image")
    return named[0]["image"]


def without_canary(document: dict[str, Any]) -> dict[str, Any]:
    """A copy of a SeldonDeployment with one predictor: a canary and traffic weights removed."""
    import copy

    single = copy.deepcopy(document)
    predictors = single["spec"]["predictors"]
    kept = [p for p in predictors if p.get("name") != CANARY][:1] or predictors[:1]
    for predictor in kept:
        predictor.pop("traffic", None)
    single["spec"]["predictors"] = kept
    (single["metadata"].get("annotations") or {}).pop(ANNOTATION_CANARY_SHA256, None)
    return single


def with_canary(live: dict[str, Any], candidate: dict[str, Any], percent: int) -> dict[str, Any]:
    """The live SeldonDeployment with the candidate's predictor beside it, as `canary`.

    Seldon v1 splits requests between predictors by their `traffic` weights (summing to 100);
    the canary's pods carry the predictor label, so Prometheus tells its series apart.
    """
    import copy

    both = without_canary(live)
    [current] = both["spec"]["predictors"]
    current["traffic"] = 100 - percent
    canary = copy.deepcopy(candidate["spec"]["predictors"][0])
    canary["name"] = CANARY
    canary["traffic"] = percent
    for component in canary.get("componentSpecs") or []:
        labels = component.setdefault("metadata", {}).setdefault("labels", {})
        labels[rendering.PREDICTOR_LABEL] = CANARY
    both["spec"]["predictors"] = [current, canary]
    annotations = both["metadata"].setdefault("annotations", {})
    annotations[ANNOTATION_CANARY_SHA256] = candidate["metadata"]["annotations"][
        rendering.ANNOTATION_MODEL_SHA256
    ]
    return both


def prometheus_value(url: str, expr: str) -> float | None:
    """The first value of an instant query; None when the result is empty or NaN."""
    import math
    import urllib.parse
    import urllib.request

    address = f"{url.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    try:
        with urllib.request.urlopen(address, timeout=PROMETHEUS_SECONDS) as response:
            result = json.load(response)["data"]["result"]
        value = float(result[0]["value"][1]) if result else math.nan
    except (OSError, ValueError, KeyError, IndexError, TypeError) as error:
        reason = getattr(error, "reason", error)
        raise StepFailed(
            f"Prometheus at {url} did not answer the canary's query: {reason}"
        ) from None
    return None if math.isnan(value) else value


def judge_by_prometheus(url: str, target: Target, seconds: int, limits: MonitoringParams) -> str:
    """Check the canary's 5xx ratio and p99 latency over the window; StepFailed if over a limit."""
    from mlops_template import monitoring

    queries = monitoring.predictor_queries(target.name, target.namespace, CANARY, seconds)
    requests = prometheus_value(url, queries["requests"])
    if not requests:
        raise StepFailed(
            f"canary: Prometheus at {url} recorded no requests to it in the last {seconds} s "
            "(is the PodMonitor applied? the workflow's monitoring input)"
        )
    ratio = (prometheus_value(url, queries["server_errors"]) or 0.0) / requests
    if ratio > limits.server_error_ratio:
        raise StepFailed(
            f"canary: {ratio:.1%} of its requests were answered 5xx, above "
            f"monitoring.server_error_ratio {limits.server_error_ratio:.1%}"
        )
    p99 = prometheus_value(url, queries["p99"])
    if p99 is not None and p99 > limits.p99_latency_seconds:
        raise StepFailed(
            f"canary: p99 latency {p99 * 1000:.1f} ms is above monitoring.p99_latency_seconds "
            f"({limits.p99_latency_seconds * 1000:g} ms)"
        )
    latency = "no latency recorded" if p99 is None else f"p99 {p99 * 1000:.1f} ms"
    return f"Prometheus: {requests:.0f} requests, {ratio:.1%} answered 5xx, {latency}"


def observe(
    kubectl: Kubectl,
    target: Target,
    request: Path,
    plan: CanaryPlan,
    attempts: int,
    interval: float,
) -> str:
    """Smoke-test the canary through the window, then judge it; StepFailed if it falls short."""
    canary = Target(target.name, target.namespace, CANARY)
    smoke_test(kubectl, canary, request, attempts, interval)
    probes = 1
    deadline = time.monotonic() + plan.params.observe_seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(plan.params.probe_interval_seconds, left))
        smoke_test(kubectl, canary, request, 1, 0)
        probes += 1
    judged = f"{probes} smoke requests answered"
    if plan.prometheus_url:
        window = plan.params.observe_seconds
        judged += "; " + judge_by_prometheus(plan.prometheus_url, target, window, plan.limits)
    return judged


# --- the command ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """What `mlops deploy` was asked to do, beyond the manifest and the smoke request."""

    gate: GateParams
    params: Path = DEFAULT_PARAMS
    force: bool = False
    canary: CanaryPlan | None = None
    rollback_to: str = ""
    environment: str = ""
    timeout: float = 300
    dry_run: bool = False
    smoke_attempts: int = 5
    smoke_interval: float = 5.0
    load_test: LoadTest | None = None


def recorded_annotations(annotations: dict[str, str]) -> dict[str, str]:
    """The annotations that describe the model (what a later rollback restores)."""
    return {key: annotations[key] for key in MODEL_ANNOTATIONS if key in annotations}


def from_registry(manifest: Manifest, options: Options) -> None:
    """Make `manifest` deploy the registry version `--rollback-to` names, as it was deployed."""
    from mlops_template import registry

    deployed = registry.deployed_model(options.params, options.rollback_to)
    for container in containers_of(manifest.seldon_deployment):
        if container.get("name") == rendering.CONTAINER:
            container["image"] = deployed.image
    annotations = manifest.annotations
    for key in [*MODEL_ANNOTATIONS, ANNOTATION_FORCED]:
        annotations.pop(key, None)
    annotations.update(recorded_annotations(deployed.annotations))
    annotations[ANNOTATION_ROLLBACK] = f"{options.rollback_to} (version {deployed.version})"
    logger.info(
        "--rollback-to %s: version %s of %s, image %s",
        options.rollback_to, deployed.version, deployed.name, deployed.image,
    )  # fmt: skip


def keep_registry(options: Options, document: dict[str, Any], previous_sha: str | None) -> None:
    """Point the environment's alias at the model `document` runs; a failure only warns."""
    if not options.environment:
        return
    from mlops_template import registry

    annotations = document["metadata"].get("annotations") or {}
    try:
        line = registry.record_deploy(
            options.params,
            options.environment,
            annotations[rendering.ANNOTATION_MODEL_SHA256],
            previous_sha,
            image_of(document),
            recorded_annotations(annotations),
        )
    except UserError as error:
        summarize(f"registry: not updated: {error}", error=True)
        return
    summarize(line)


def canary_first(
    kubectl: Kubectl,
    manifest: Manifest,
    live: dict[str, Any],
    previous: Path,
    request: Path,
    plan: CanaryPlan,
    options: Options,
) -> int | None:
    """Try the new model beside the live one; None when it may be promoted, else the exit code."""
    target = target_of(manifest.seldon_deployment, f"manifest {manifest.path}")
    both = with_canary(live, manifest.seldon_deployment, plan.params.traffic_percent)
    path = Manifest(manifest.path, [both], 0).write(manifest.path.with_suffix(".canary.yaml"))
    summarize(
        f"canary: the new model gets {plan.params.traffic_percent}% of requests beside the live "
        f"one for {plan.params.observe_seconds} s"
    )
    try:
        kubectl.check(
            "applying the canary", "apply", "-f", str(path), "--namespace", target.namespace
        )
        wait_available(kubectl, target, options.timeout)
        judged = observe(
            kubectl, target, request, plan, options.smoke_attempts, options.smoke_interval
        )
    except StepFailed as error:
        code = roll_back(kubectl, target, manifest.path, previous, options.timeout)
        if code == EXIT_ROLLED_BACK:
            summarize(f"canary removed: {error}; the live model serves every request", error=True)
        else:
            summarize(f"canary: {error}; removing it failed, see the log", error=True)
        return code
    summarize(f"canary promoted: {judged}")
    return None


def deploy(kubectl: Kubectl, manifest_path: Path, request: Path, options: Options) -> int:
    """Gate, apply (after a canary, if asked), wait, smoke-test, roll back on failure."""
    manifest = read_manifest(manifest_path)
    target = target_of(manifest.seldon_deployment, f"manifest {manifest_path}")
    scope = ("--namespace", target.namespace)
    request_rows(request)  # a missing or malformed request is the user's to fix, before applying
    if options.rollback_to:
        from_registry(manifest, options)
    try:
        live = read_live(kubectl, target)
    except StepFailed as error:
        summarize(f"{target.resource}: {error}; nothing applied", error=True)
        return EXIT_ROLLED_BACK
    decision = decide(
        manifest.annotations, live, options.gate, force=options.force, rollback=options.rollback_to
    )
    if decision.outcome == REFUSED:
        summarize(decision.line, error=True)
        return EXIT_REFUSED
    if decision.outcome == RUNNING:
        summarize(decision.line)
        if not options.dry_run:
            keep_registry(options, manifest.seldon_deployment, None)
        return EXIT_OK
    if decision.forced:
        manifest.annotations[ANNOTATION_FORCED] = decision.forced
    applied = manifest.write(manifest_path.with_suffix(".applied.yaml"))
    if options.dry_run:
        # Server-side dry run: the cluster validates against the installed CRD schema and
        # Seldon's admission webhook, and persists nothing.
        try:
            kubectl.check("dry run", "apply", "--dry-run=server", "-f", str(applied), *scope)
        except StepFailed as error:
            summarize(f"dry run: {error}", error=True)
            return EXIT_ROLLED_BACK
        summarize(f"dry run: {decision.line}; the manifest is valid for the cluster; "
                  "nothing was applied")  # fmt: skip
        return EXIT_OK

    previous = save_previous(live, target, manifest_path.with_suffix(".previous.yaml"))
    summarize(decision.line)
    if options.canary is not None and live is not None and live.last_applied is not None:
        code = canary_first(
            kubectl, manifest, live.last_applied, previous, request, options.canary, options
        )
        if code is not None:
            return code
    elif options.canary is not None:
        summarize("canary: no live model to share requests with, so none; deploying directly")
    try:
        kubectl.check("apply", "apply", "-f", str(applied), *scope)
        wait_available(kubectl, target, options.timeout)
        smoke_test(kubectl, target, request, options.smoke_attempts, options.smoke_interval)
        if options.load_test is not None:
            load_test_through_cluster(kubectl, target, options.load_test)
    except StepFailed as error:
        logger.error("%s", error)
        code = roll_back(kubectl, target, applied, previous, options.timeout)
        back = (
            "rolled back to the previous model" if previous else "removed the failed first deploy"
        )
        if code != EXIT_ROLLED_BACK:
            back = "rolling back failed too: see the log"
        summarize(f"deploy failed ({error}); {back}", error=True)
        if code == EXIT_ROLLED_BACK and live is not None and live.last_applied is not None:
            keep_registry(options, without_canary(live.last_applied), None)
        return code
    summarize(f"deployed {target.resource} to {target.namespace}")
    keep_registry(options, manifest.seldon_deployment, live.model_sha256 if live else None)
    return EXIT_OK


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the command's options."""
    parser.add_argument("--manifest", type=Path, required=True, help="rendered SeldonDeployment")
    parser.add_argument(
        "--request",
        type=Path,
        default=contract.DEFAULT_DIR / contract.SAMPLE_REQUEST_FILE,
        help="smoke request sent through the cluster (default: %(default)s)",
    )
    parser.add_argument(
        "--timeout", type=float, default=300, help="seconds to become available (default: 300)"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="say what the gate decides and validate on the cluster; apply nothing",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="deploy even if the gate refuses (worse metric, other test data); recorded in an "
        f"annotation ({ANNOTATION_FORCED}) and the job summary",
    )
    parser.add_argument(
        "--canary",
        action="store_true",
        help="first give the new model a share of requests beside the live one, observe it, then "
        "promote or remove it (params.yaml deploy.canary)",
    )
    parser.add_argument(
        "--prometheus-url",
        metavar="URL",
        help="judge the canary by its 5xx ratio and p99 latency in this Prometheus "
        "(params.yaml monitoring limits); without it, by its smoke requests alone",
    )
    parser.add_argument(
        "--environment",
        metavar="ALIAS",
        default="",
        help="with MLFLOW_TRACKING_URI set, point this registry alias (e.g. staging) at the "
        "deployed model's version, and ALIAS-previous at the one it replaced",
    )
    parser.add_argument(
        "--rollback-to",
        metavar="ALIAS_OR_VERSION",
        default="",
        help="deploy the registry version this alias or number names, with the image it was "
        "last deployed with (needs MLFLOW_TRACKING_URI); the metric gate does not apply",
    )
    parser.add_argument(
        "--kubeconfig-env",
        metavar="VARIABLE",
        help="environment variable holding the kubeconfig (YAML or base64); default: kubectl's",
    )
    parser.add_argument("--kubectl", default="kubectl", help="kubectl binary (default: kubectl)")
    parser.add_argument(
        "--load-test",
        action="store_true",
        help="after the smoke request, run the Locust scenario through a port-forward to the "
        "predictor (params.yaml's load_test); a failure rolls back",
    )
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params file")
    parser.add_argument("--smoke-attempts", type=int, default=5, help=argparse.SUPPRESS)
    parser.add_argument("--smoke-interval", type=float, default=5.0, help=argparse.SUPPRESS)


def run(args: argparse.Namespace) -> int:
    """Entry point for `mlops deploy`."""
    from mlops_template.params import deploy_params, load_params, monitoring_params

    if args.timeout <= 0:
        raise UserError(f"--timeout must be positive, got {args.timeout}")
    if args.smoke_attempts < 1:
        raise UserError(f"--smoke-attempts must be at least 1, got {args.smoke_attempts}")
    if args.prometheus_url and not args.canary:
        raise UserError("--prometheus-url judges a canary: add --canary")
    if args.prometheus_url and not args.prometheus_url.startswith(("http://", "https://")):
        raise UserError(f"--prometheus-url must be an http(s) URL, got {args.prometheus_url!r}")
    raw = load_params(args.params)
    deploy_settings = deploy_params(raw)
    gate_improves_upwards(deploy_settings.gate)  # a metric the pipeline does not compute: now
    canary = None
    if args.canary:
        canary = CanaryPlan(deploy_settings.canary, monitoring_params(raw), args.prometheus_url)
    settings = None
    if args.load_test and not args.dry_run:
        from mlops_template import loadtest
        from mlops_template.params import load_test_params

        settings = LoadTest(
            load_test_params(raw),
            loadtest.DEFAULT_LOCUSTFILE,
            loadtest.DEFAULT_ROWS,
            loadtest.DEFAULT_OUT,
        )
    options = Options(
        gate=deploy_settings.gate,
        params=args.params,
        force=args.force,
        canary=canary,
        rollback_to=args.rollback_to.strip(),
        environment=args.environment.strip(),
        timeout=args.timeout,
        dry_run=args.dry_run,
        smoke_attempts=args.smoke_attempts,
        smoke_interval=args.smoke_interval,
        load_test=settings,
    )
    with kubeconfig_from(args.kubeconfig_env, dict(os.environ)) as env:
        return deploy(Kubectl(args.kubectl, env), args.manifest, args.request, options)
