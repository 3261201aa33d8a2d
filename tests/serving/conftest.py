"""A serving package built by the real pipeline code, and the real microservice serving it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SERVE_PYTHON = Path(os.environ.get("SERVE_PYTHON", REPO / ".venv-serve" / "bin" / "python"))
# Small enough that a too-large batch is cheap to send, large enough for the 1,000-row check.
MAX_BATCH_ROWS = 1500
START_TIMEOUT_SECONDS = 90.0


def free_port() -> int:
    """A TCP port nothing listens on right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http(
    method: str, url: str, body: bytes | None = None, content_type: str = "application/json"
) -> tuple[int, Any]:
    """Send one request on loopback; return (status code, parsed JSON or text)."""
    headers = {"Content-Type": content_type} if body is not None else {}
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, payload = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, payload = error.code, error.read()
    try:
        return status, json.loads(payload)
    except ValueError:
        return status, payload.decode()


def predict(base_url: str, message: Any) -> tuple[int, Any]:
    """POST a Seldon message to the prediction endpoint."""
    return http("POST", f"{base_url}/api/v1.0/predictions", json.dumps(message).encode())


@dataclass
class Server:
    """One `serve.py` process (the image's entry point) on free loopback ports."""

    package_dir: Path
    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # over this process's, as a pod's env
    http_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        """Base URL of the REST endpoint."""
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, log_path: Path) -> Server:
        """Start the server in the serving environment, as `make serve` and the image do."""
        self.log_path = log_path
        ports = [
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
        ]
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [str(SERVE_PYTHON), str(self.package_dir / "serve.py"), *ports, *self.extra_args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
            )
        return self

    def log(self) -> str:
        """Everything the server wrote so far."""
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def wait_ready(self, timeout: float = START_TIMEOUT_SECONDS) -> float:
        """Poll /health/ping until it answers; return the seconds it took."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health/ping", timeout=2) as response:
                    if response.status == 200:
                        return time.monotonic() - started
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"server not ready after {timeout} s:\n{self.log()}")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM the entry point, as Kubernetes does, and return its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)


def load_test(
    url: str, serving_package: Path, params: Path, seconds: int, out: Path
) -> subprocess.CompletedProcess[str]:
    """`mlops load-test` against `url` for `seconds`, rows from the package's test split."""
    return subprocess.run(
        [
            sys.executable, "-m", "mlops_template.cli", "load-test", "--url", url,
            "--duration", str(seconds), "--out", str(out),
            "--rows", str(serving_package.parent / "processed" / "test.parquet"),
            "--locustfile", str(REPO / "loadtest" / "locustfile.py"),
            "--params", str(params),
        ],
        capture_output=True, text=True, timeout=seconds + 180,
    )  # fmt: skip


@pytest.fixture(scope="session")
def serve_python() -> Path:
    """The serving environment's interpreter (the one the image installs)."""
    if not SERVE_PYTHON.exists():
        pytest.fail(f"{SERVE_PYTHON} is missing: run `make setup` to build .venv-serve")
    return SERVE_PYTHON


@pytest.fixture(scope="session")
def serving_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run process, fit and package with the pipeline's own functions into a temporary folder."""
    import joblib

    from mlops_template.dataset import read_schema, read_split
    from mlops_template.files import write_json
    from mlops_template.params import load_params, train_params
    from mlops_template.stages.package import build_package
    from mlops_template.stages.process import process
    from mlops_template.stages.train import fit_and_evaluate

    root = tmp_path_factory.mktemp("pipeline")
    params_path = REPO / "params.yaml"
    processed = root / "processed"
    process(REPO / "data" / "raw" / "penguins.csv", processed, params_path)
    schema = read_schema(processed / "schema.json")
    params = train_params(load_params(params_path))
    # The train stage's own core; only its file writing and MLflow logging are left out here.
    trained = fit_and_evaluate(
        schema,
        read_split(processed / "train.parquet", schema),
        read_split(processed / "test.parquet", schema),
        params,
    )
    joblib.dump(trained.pipeline, root / "model.joblib")
    write_json(root / "metrics.json", trained.evaluation.metrics)
    package_dir = root / "serving"
    build_package(
        root / "model.joblib",
        processed,
        root / "metrics.json",
        REPO / "requirements" / "serve.lock",
        package_dir,
        MAX_BATCH_ROWS,
        params.estimator_class,
    )
    return package_dir


@pytest.fixture(scope="session")
def joblib_package(serving_package: Path) -> Path:
    """The same model packaged to be served with joblib (`package.runtime: joblib`)."""
    from mlops_template.params import load_params, train_params
    from mlops_template.stages.package import build_package

    root = serving_package.parent
    package_dir = root / "serving-joblib"
    build_package(
        root / "model.joblib",
        root / "processed",
        root / "metrics.json",
        REPO / "requirements" / "serve.lock",
        package_dir,
        MAX_BATCH_ROWS,
        train_params(load_params(REPO / "params.yaml")).estimator_class,
        runtime="joblib",
    )
    return package_dir


@contextlib.contextmanager
def running(package_dir: Path, directory: Path) -> Iterator[Server]:
    """The real microservice serving `package_dir` until the block ends."""
    started = Server(package_dir).start(directory / "server.log")
    try:
        started.wait_ready()
        yield started
    finally:
        started.stop()
        if started.process.returncode not in (0, None):
            sys.stderr.write(started.log())


@pytest.fixture(scope="session")
def server(
    serving_package: Path, serve_python: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """The real microservice on free loopback ports, shared by the tests of this folder."""
    with running(serving_package, tmp_path_factory.mktemp("server")) as started:
        yield started


@pytest.fixture(scope="session")
def joblib_server(
    joblib_package: Path, serve_python: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """The real microservice serving the joblib package of the same model."""
    with running(joblib_package, tmp_path_factory.mktemp("joblib-server")) as started:
        yield started


@contextlib.contextmanager
def scraped(
    serving_package: Path, directory: Path, labels: dict[str, str] | None = None
) -> Iterator[tuple[Server, str]]:
    """A fresh server (counters from zero) and a real Prometheus scraping it every second.

    Prometheus runs with the configuration `make monitor` writes, plus `labels` on every series
    (what a PodMonitor adds in a cluster), in its own process group on 127.0.0.1. Yields the
    server and Prometheus' base URL; both are stopped afterwards.
    """
    import yaml

    from mlops_template import processes, prometheus
    from mlops_template.params import load_params, monitoring_params

    server = Server(serving_package).start(directory / "server.log")
    limits = monitoring_params(load_params(REPO / "params.yaml"))
    config = prometheus.write_configuration(
        directory / "monitor", server.metrics_port, limits, scrape_seconds=1
    )
    if labels:
        settings = yaml.safe_load(config.read_text())
        settings["scrape_configs"][0]["static_configs"][0]["labels"] = labels
        config.write_text(yaml.safe_dump(settings))
    port = free_port()
    command = prometheus.command(config, directory / "monitor" / "data", port)
    process = processes.start(command, directory / "prometheus.log", dict(os.environ))
    base = f"http://127.0.0.1:{port}"
    try:
        server.wait_ready()
        processes.wait_until_answers("Prometheus", f"{base}/-/ready", process, 60, directory)
        yield server, base
    finally:
        processes.stop(process.pid)
        server.stop()
