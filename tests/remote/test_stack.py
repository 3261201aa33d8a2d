"""`mlops stack up|status|down` (the Make targets stack-up, stack-status, stack-down) in a clone,
as a newcomer uses it: start, run the pipeline against it, push, look, stop."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from mlops_template import stack
from mlops_template.files import sha256
from mlops_template.processes import free_port
from tests.conftest import clone_repository, fails, project_env, sh

pytestmark = [pytest.mark.slow, pytest.mark.remote]


def listening(pids: set[int]) -> set[tuple[str, int]]:
    """(address, port) of every listening TCP socket held by these processes."""
    return {
        (connection.laddr.ip, connection.laddr.port)
        for connection in psutil.net_connections(kind="inet")
        if connection.status == psutil.CONN_LISTEN and connection.pid in pids
    }


def group(leader: int) -> set[int]:
    """The processes of the group `leader` leads."""
    return {process.pid for process in psutil.process_iter() if _pgid(process.pid) == leader}


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def test_stack_up_run_push_status_down(tmp_path: Path) -> None:
    repository = clone_repository(tmp_path / "repo")
    ports = {
        "STACK_S3_PORT": str(free_port()),
        "STACK_MLFLOW_PORT": str(free_port()),
    }
    env = project_env(**ports)

    started = sh("mlops", "stack", "up", cwd=repository, env=env)

    state = stack.State.load(repository / stack.STATE_DIR)
    assert state is not None, started
    assert f"MLflow tracking server:   running, pid {state.mlflow.pid}" in started
    processes = group(state.s3.pid) | group(state.mlflow.pid)
    sockets = listening(processes)
    assert {port for _, port in sockets} >= {int(port) for port in ports.values()}
    assert {address for address, _ in sockets} == {"127.0.0.1"}, "nothing beyond loopback"

    # The env file works for the Makefile and for a shell alike.
    uri = f"http://127.0.0.1:{ports['STACK_MLFLOW_PORT']}"
    makefile = "include .stack/env\nshow:\n\t@echo $$MLFLOW_TRACKING_URI\n"
    done = subprocess.run(
        ["make", "-s", "-f", "-", "show"], input=makefile, cwd=repository, env=env,
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert done.stdout.strip() == uri
    shell = sh("bash", "-c", "source .stack/env && echo $MLFLOW_TRACKING_URI", cwd=repository)
    assert shell.strip() == uri

    assert "already running" in sh("mlops", "stack", "up", cwd=repository, env=env)
    sh("dvc", "repro", cwd=repository, env=project_env(MLFLOW_TRACKING_URI=uri))
    pushed = sh("mlops", "data", "push", cwd=repository, env=env)
    assert "remote 'stack' (s3://mlops-stack/dvc" in pushed

    client = MlflowClient(uri)
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    model_sha256 = sha256(repository / "models/model.joblib")
    [run] = client.search_runs(experiments, f"tags.model_sha256 = '{model_sha256}'")
    keys = [
        item["Key"]
        for item in stack.s3_client(state.s3.url, state.credentials).list_objects_v2(
            Bucket=stack.BUCKET
        )["Contents"]
    ]
    assert any(key.startswith("dvc/files/md5/") for key in keys)
    assert any(f"/{run.info.run_id}/artifacts/plots/" in key for key in keys)
    status = sh("mlops", "stack", "status", cwd=repository, env=env)
    assert status.count("running, pid") == 2

    stopped = sh("mlops", "stack", "down", cwd=repository, env=env)

    assert "stopped" in stopped
    assert not any(psutil.pid_exists(pid) for pid in processes)
    assert not (repository / stack.STATE_DIR).exists()
    assert "stack" not in (repository / ".dvc/config.local").read_text()
    assert sh("git", "status", "--porcelain", cwd=repository) == ""
    assert "not running" in sh("mlops", "stack", "status", cwd=repository, env=env)


def test_a_port_in_use_is_one_line_naming_it(tmp_path: Path) -> None:
    repository = clone_repository(tmp_path / "repo")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = project_env(STACK_S3_PORT=str(port), STACK_MLFLOW_PORT=str(free_port()))
        output = fails("mlops", "stack", "up", cwd=repository, env=env)
    assert output.strip() == (
        f"error: port {port} on 127.0.0.1 is in use: stop what listens there, or choose another "
        "with STACK_S3_PORT=PORT"
    )
    assert not (repository / stack.STATE_DIR / stack.STATE_FILE).exists()
