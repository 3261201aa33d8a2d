"""Local servers on 127.0.0.1, each in a process group of its own and stopped by it.

Shared by `mlops stack` (S3 and MLflow), `mlops ui`, `mlops deploy --load-test` (its
port-forward) and the tests and benchmarks that start real servers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from mlops_template.errors import UserError

HOST = "127.0.0.1"
STOP_SECONDS = 10.0


def free_port() -> int:
    """A TCP port nothing listens on right now (the kernel picks it)."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def port_from(variable: str, default: int) -> int:
    """A port from the environment, or the documented default; UserError if it is taken."""
    text = os.environ.get(variable, str(default))
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise UserError(f"{variable} must be a TCP port number, got {text!r}")
    port = int(text)
    with socket.socket() as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            raise UserError(
                f"port {port} on {HOST} is in use: stop what listens there, or choose another "
                f"with {variable}=PORT"
            ) from None
    return port


def start(command: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start a server in a session (and process group) of its own, its output in `log`."""
    with log.open("ab") as output:
        return subprocess.Popen(
            command,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )


def wait_until_answers(
    name: str, url: str, process: subprocess.Popen[bytes], seconds: float, log: Path
) -> None:
    """Poll `url` until it answers 200; UserError if the process ends or time runs out."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise UserError(f"{name} exited with code {process.returncode} at start; see {log}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.2)
    stop(process.pid)
    raise UserError(f"{name} did not answer at {url} within {seconds:.0f} s; see {log}")


def stop(pid: int, seconds: float = STOP_SECONDS) -> None:
    """SIGTERM the process group `pid` leads, SIGKILL what is left after `seconds`."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def running(pid: int) -> bool:
    """Whether the process group `pid` leads still has a live process."""
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
