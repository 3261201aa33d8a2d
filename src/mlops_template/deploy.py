"""`mlops deploy`: apply a rendered SeldonDeployment, check it serves, roll back if it does not.

The decisions live here (not in the workflow) so they are tested locally with a `kubectl`
stand-in; the deploy workflow only renders the manifest and calls this command.

Order of events for a real deploy:
1. read the manifest (name, namespace, predictor) and, if the SeldonDeployment already exists,
   save what `kubectl apply` last applied to it: that is the rollback target;
2. `kubectl apply` the new manifest;
3. wait until Seldon reports it `Available` and its Deployments have rolled out (one time limit);
4. send the sample request through the cluster (API server proxy -> Service -> executor) and
   check the answer has one prediction per row;
5. on any failure: re-apply the previous manifest and wait for it, or, on a first deploy,
   delete the new SeldonDeployment. Either way the command exits non-zero.
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

from mlops_template.errors import UserError
from mlops_template.params import DEFAULT_PARAMS, LoadTestParams
from mlops_template.processes import HOST, free_port, stop
from mlops_template.serving import contract

logger = logging.getLogger(__name__)

KIND = "SeldonDeployment"
RESOURCE = "seldondeployment"
# Seldon Core v1 puts an executor in front of every predictor, behind a Service named
# <deployment>-<predictor> that speaks the v1 REST protocol on this port.
EXECUTOR_HTTP_PORT = 8000
# Exit codes: 2 is the CLI's code for a user error (bad manifest, missing file).
EXIT_OK = 0
EXIT_ROLLED_BACK = 1
EXIT_ROLLBACK_FAILED = 3
PORT_FORWARD_SECONDS = 30


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


def read_target(manifest: Path) -> Target:
    """Read name, namespace and first predictor from a one-SeldonDeployment manifest."""
    import yaml

    try:
        documents = [doc for doc in yaml.safe_load_all(manifest.read_text("utf-8")) if doc]
    except FileNotFoundError:
        raise UserError(
            f"manifest {manifest} does not exist (render it with `mlops manifest`)"
        ) from None
    except yaml.YAMLError as error:
        raise UserError(f"manifest {manifest} is not valid YAML: {error}".splitlines()[0]) from None
    found = [doc for doc in documents if isinstance(doc, dict) and doc.get("kind") == KIND]
    if len(found) != 1:
        raise UserError(f"manifest {manifest} must hold exactly one {KIND}, found {len(found)}")
    metadata = found[0].get("metadata") or {}
    predictors = (found[0].get("spec") or {}).get("predictors") or []
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
            raise UserError(f"manifest {manifest} has no {field}")
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


def save_previous(kubectl: Kubectl, target: Target, destination: Path) -> Path | None:
    """Save the manifest last applied to the existing deployment; None on a first deploy."""
    scope = ("--namespace", target.namespace)
    found = kubectl.check(
        "looking up the current deployment",
        "get",
        target.resource,
        *scope,
        "--ignore-not-found",
        "--output=name",
    )
    if not found.strip():
        return None
    previous = kubectl.run("apply", "view-last-applied", target.resource, *scope, "--output=yaml")
    if previous.returncode != 0 or not previous.stdout.strip():
        raise UserError(
            f"{target.resource} exists in {target.namespace} but was not created by "
            "`kubectl apply`, so there is no manifest to roll back to; apply it once by hand"
        )
    destination.write_text(previous.stdout, encoding="utf-8")
    logger.info("saved the current manifest to %s (the rollback target)", destination)
    return destination


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


def deploy(
    kubectl: Kubectl,
    manifest: Path,
    request: Path,
    *,
    timeout: float,
    dry_run: bool,
    smoke_attempts: int = 5,
    smoke_interval: float = 5.0,
    load_test: LoadTest | None = None,
) -> int:
    """Apply `manifest`, wait, smoke-test, and roll back on failure; return the exit code."""
    target = read_target(manifest)
    scope = ("--namespace", target.namespace)
    if dry_run:
        # Server-side dry run: the cluster validates against the installed CRD schema and
        # Seldon's admission webhook, and persists nothing.
        try:
            kubectl.check("dry run", "apply", "--dry-run=server", "-f", str(manifest), *scope)
        except StepFailed as error:
            logger.error("%s", error)
            return EXIT_ROLLED_BACK
        logger.info("dry run: %s is valid for the cluster; nothing was applied", manifest)
        return EXIT_OK

    request_rows(request)  # a missing or malformed request is the user's to fix, before applying
    previous = save_previous(kubectl, target, manifest.with_suffix(".previous.yaml"))
    try:
        kubectl.check("apply", "apply", "-f", str(manifest), *scope)
        wait_available(kubectl, target, timeout)
        smoke_test(kubectl, target, request, smoke_attempts, smoke_interval)
        if load_test is not None:
            load_test_through_cluster(kubectl, target, load_test)
    except StepFailed as error:
        logger.error("%s", error)
        return roll_back(kubectl, target, manifest, previous, timeout)
    logger.info("deployed %s to %s", target.resource, target.namespace)
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
        "--dry-run", action="store_true", help="validate on the cluster, apply nothing"
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
    if args.timeout <= 0:
        raise UserError(f"--timeout must be positive, got {args.timeout}")
    if args.smoke_attempts < 1:
        raise UserError(f"--smoke-attempts must be at least 1, got {args.smoke_attempts}")
    settings = None
    if args.load_test and not args.dry_run:
        from mlops_template import loadtest
        from mlops_template.params import load_params, load_test_params

        settings = LoadTest(
            load_test_params(load_params(args.params)),
            loadtest.DEFAULT_LOCUSTFILE,
            loadtest.DEFAULT_ROWS,
            loadtest.DEFAULT_OUT,
        )
    with kubeconfig_from(args.kubeconfig_env, dict(os.environ)) as env:
        return deploy(
            Kubectl(args.kubectl, env),
            args.manifest,
            args.request,
            timeout=args.timeout,
            dry_run=args.dry_run,
            smoke_attempts=args.smoke_attempts,
            smoke_interval=args.smoke_interval,
            load_test=settings,
        )
