"""The local servers a user starts from the README: each on its own port, on 127.0.0.1, and a
taken port named at once."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from mlops_template import prometheus, stack, ui

REPO = Path(__file__).resolve().parents[1]
MLOPS = str(Path(sys.executable).with_name("mlops"))


def makefile_default(name: str) -> str:
    """The `NAME ?= value` default of a Makefile variable."""
    found = re.search(rf"^(?:export )?{name} \?= (\S+)$", (REPO / "Makefile").read_text(), re.M)
    assert found, name
    return found.group(1)


def test_documented_local_servers_use_distinct_ports() -> None:
    ports = {
        "make serve HTTP": int(makefile_default("HTTP_PORT")),
        "make serve gRPC": int(makefile_default("GRPC_PORT")),
        "make serve metrics": int(makefile_default("METRICS_PORT")),
        "make mlflow-ui": ui.DEFAULT_PORT,
        "make stack-up S3": stack.DEFAULT_S3_PORT,
        "make stack-up MLflow": stack.DEFAULT_MLFLOW_PORT,
        "make monitor": prometheus.DEFAULT_PORT,
    }
    assert len(set(ports.values())) == len(ports), ports


def test_make_serve_binds_loopback_by_default() -> None:
    assert makefile_default("SERVE_HOST") == "127.0.0.1"


def test_mlflow_ui_on_a_taken_port_fails_at_once_naming_it(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        started = time.monotonic()
        done = subprocess.run(
            [MLOPS, "ui"],
            cwd=tmp_path,
            env={**os.environ, ui.PORT_VARIABLE: str(port)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert time.monotonic() - started < 10
    assert done.returncode == 2
    assert done.stderr == (
        f"error: port {port} on 127.0.0.1 is in use: stop what listens there, or choose another "
        f"with {ui.PORT_VARIABLE}=PORT\n"
    )
