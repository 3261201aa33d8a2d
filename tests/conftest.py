"""Fixtures shared by the pipeline tests: small messy data built in the test, and params files."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
# Everything the pipeline writes into the workspace, in git or in DVC.
OUTPUTS = ("data/processed", "models", "metrics.json", "plots", "dvc.lock")


# A pin in a lock or requirements file: `name==version`, before any marker or hash.
PIN = re.compile(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)", re.MULTILINE)


def pins(lock: str) -> dict[str, str]:
    """Canonical package name -> pinned version, for every pin in a lock file's text."""
    return {canonicalize_name(name): version for name, version in PIN.findall(lock)}


class JsonHandler(BaseHTTPRequestHandler):
    """A quiet request handler for stand-in services that answer JSON."""

    def log_message(self, *args: Any) -> None:
        pass

    def answer(self, status: int, data: object) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextlib.contextmanager
def local_http_server(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A stand-in HTTP service on 127.0.0.1 (a free port), in a thread: yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def project_env(**variables: str) -> dict[str, str]:
    """The environment commands run in: this project's tools first on PATH, no tracking server
    unless one is given, no DVC usage reports."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env["DVC_NO_ANALYTICS"] = "1"
    return env | variables


def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a command in `cwd` with the project's environment; bounded in time."""
    return subprocess.run(
        args, cwd=cwd, env=env or project_env(), capture_output=True, text=True, timeout=600
    )


def sh(*args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run a command that must succeed; its standard output and error."""
    done = run(*args, cwd=cwd, env=env)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def fails(*args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run a command that must fail; its standard output and error."""
    done = run(*args, cwd=cwd, env=env)
    assert done.returncode != 0, f"{' '.join(args)} succeeded:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def clone_repository(path: Path) -> Path:
    """A clone of the committed repository, as a newcomer gets it, with a git identity."""
    sh("git", "clone", "--quiet", str(REPO), str(path), cwd=REPO)
    sh("git", "config", "user.email", "test@example.com", cwd=path)
    sh("git", "config", "user.name", "test", cwd=path)
    return path


def snapshot(clone: Path) -> dict[str, bytes]:
    """{path: bytes} of every file the pipeline wrote."""
    files = {}
    for name in OUTPUTS:
        root = clone / name
        for path in [root] if root.is_file() else sorted(root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                files[str(path.relative_to(clone))] = path.read_bytes()
    return files


def messy_frame(n_rows: int = 90, labels: tuple[Any, ...] = ("ant", "bee", "cat"), seed: int = 0):
    """Mixed numeric and categorical columns with gaps; only `length` carries the label."""
    rng = np.random.default_rng(seed)
    signal = np.arange(n_rows) % len(labels)
    frame = pd.DataFrame(
        {
            "length": signal * 3.0 + rng.normal(0, 0.4, n_rows),
            "weight": rng.normal(10, 2, n_rows).round(2),
            "colour": rng.choice(["red", "green", "blue"], n_rows),
            "shape": rng.choice(["round", "square"], n_rows),
            "label": np.array(labels, dtype=object)[signal],
        }
    )
    frame.loc[::7, "length"] = np.nan
    frame.loc[::5, "colour"] = np.nan
    frame.loc[3::11, "weight"] = np.nan
    return frame


def package_metadata(**fields: Any):
    """A valid serving-package metadata record; keyword arguments replace fields."""
    from mlops_template.serving import contract

    values: dict[str, Any] = {
        "estimator": "RandomForestClassifier",
        "target": "label",
        "features": (
            contract.Feature("length", contract.NUMERIC),
            contract.Feature("colour", contract.CATEGORICAL, ("blue", "red")),
        ),
        "classes": ("ant", "bee"),
        "metrics": {"accuracy": 0.9},
        "training_rows": 60,
        "max_batch_rows": 100,
        "model_sha256": "ab" * 32,
        "evaluation_data_sha256": "cd" * 32,
        "reference": contract.Reference(
            class_shares={"ant": 0.5, "bee": 0.5},
            missing_shares={"length": 0.1, "colour": 0.0},
            bins={"length": contract.Bins((1.0, 2.0), (0.3, 0.3, 0.4))},
        ),
        "runtime": contract.JOBLIB,
        "onnx_sha256": None,
        "missing_level": "missing",
        "versions": dict.fromkeys(contract.VERSIONED_LIBRARIES, "1.0"),
    }
    return contract.PackageMetadata(**{**values, **fields})


def params_dict(**sections: dict[str, Any]) -> dict[str, Any]:
    """The repository's params.yaml with some keys of some sections replaced."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["target"] = "label"
    for section, values in sections.items():
        params.setdefault(section, {}).update(values)
    return params


@pytest.fixture
def write_params(tmp_path: Path):
    """Write a params file into tmp_path; keyword arguments override sections."""

    def write(**sections: dict[str, Any]) -> Path:
        path = tmp_path / "params.yaml"
        path.write_text(yaml.safe_dump(params_dict(**sections)))
        return path

    return write


@pytest.fixture
def messy_csv(tmp_path: Path) -> Path:
    """A three-class CSV with strings, gaps and numbers."""
    path = tmp_path / "raw.csv"
    messy_frame().to_csv(path, index=False)
    return path
