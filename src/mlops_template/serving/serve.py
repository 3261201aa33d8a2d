"""Start the Seldon microservice for the model in this directory, and stop all of it on SIGTERM.

The image's entry point and `make serve` both run this file with the serving environment's
Python. Extra arguments go to `seldon-core-microservice` (for example `--http-port 9100`).
It exists because the microservice's gRPC and metrics processes ignore a SIGTERM sent to the
main process only, which would leave a pod or a terminal hanging until SIGKILL.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent

# Sensible for small scikit-learn models: prediction holds the GIL, so processes (workers) give
# parallelism, one per core. Extra threads per worker measured slower here, not faster: at 32
# connections 2x4 served 0.77 of a plain Flask app's requests/s, 2x1 the same (docs/benchmarks.md).
DEFAULTS = {
    "GUNICORN_WORKERS": "2",
    "GUNICORN_THREADS": "1",
    "GRPC_WORKERS": "1",
    "GRPC_THREADS": "1",
}
SHUTDOWN_GRACE_SECONDS = 20.0

logger = logging.getLogger("serve")


def microservice_command(extra_args: list[str]) -> list[str]:
    """The `seldon-core-microservice` command line, taken from this interpreter's environment."""
    beside_python = Path(sys.executable).parent / "seldon-core-microservice"
    program = shutil.which("seldon-core-microservice")
    if beside_python.exists():
        program = str(beside_python)
    if program is None:
        raise SystemExit("seldon-core-microservice not found: use the serving environment's python")
    return [program, "Model", "--service-type", "MODEL", *extra_args]


def reap_children() -> None:
    """Collect exited children; as PID 1 in a container the microservice's orphans become ours."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def children_of(pid: int) -> set[int]:
    """PIDs whose parent is `pid` (Linux /proc; empty elsewhere, which only skips a wait)."""
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            children.add(int(stat.parent.name))
    return children


def stop_group(leader: int, workers: int, grace_seconds: float) -> None:
    """Stop gunicorn first, then the rest of the microservice; SIGKILL what outlives the grace."""
    deadline = time.monotonic() + grace_seconds
    # Gunicorn (the leader) first: its workers finish in-flight requests, and their exit hooks
    # still reach Seldon's metrics manager, which a SIGTERM to the whole group would kill first.
    before = children_of(leader)
    with contextlib.suppress(ProcessLookupError):
        os.kill(leader, signal.SIGTERM)
    remaining = max(len(before) - workers, 0)
    while time.monotonic() < deadline and len(children_of(leader) & before) > remaining:
        time.sleep(0.05)
    # Then gRPC, metrics and the manager, which ignore the leader's SIGTERM.
    try:
        os.killpg(leader, signal.SIGTERM)
    except ProcessLookupError:
        return
    while time.monotonic() < deadline:
        reap_children()
        try:
            os.killpg(leader, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    logger.warning("processes still running after %.0f s; sending SIGKILL", grace_seconds)
    try:
        os.killpg(leader, signal.SIGKILL)
    except ProcessLookupError:
        return
    reap_children()


def main(argv: list[str]) -> int:
    """Run the microservice until it exits or a SIGTERM/SIGINT arrives; return its exit code."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s - %(name)s - %(levelname)s: %(message)s"
    )
    environment = {**DEFAULTS, **os.environ}
    grace_seconds = float(environment.get("SHUTDOWN_GRACE_SECONDS", SHUTDOWN_GRACE_SECONDS))
    workers = int(environment["GUNICORN_WORKERS"])
    command = microservice_command(argv)
    logger.info(
        "starting %s with %s workers x %s threads",
        " ".join(command[1:]),
        environment["GUNICORN_WORKERS"],
        environment["GUNICORN_THREADS"],
    )
    # A session of its own, so one killpg reaches gunicorn, its workers, gRPC and metrics.
    child = subprocess.Popen(command, cwd=PACKAGE_DIR, env=environment, start_new_session=True)
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        logger.info("received %s; stopping the microservice", signal.Signals(signum).name)
        stop_group(child.pid, workers, grace_seconds)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    code = child.wait()
    # The main process may exit on its own (a failed start); never leave its children behind.
    stop_group(child.pid, workers, grace_seconds)
    if stopping:
        return 0
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
