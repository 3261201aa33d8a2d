"""Run the Seldon microservice for the model in this directory: start it, watch it, stop it.

The image's entry point and `make serve` both run this file with the serving environment's
Python. Extra arguments go to Seldon's `seldon-core-microservice` (for example `--http-port 9100`).
It exists because the microservice's gRPC and metrics processes ignore a SIGTERM sent to the
main process only, which would leave a pod or a terminal hanging until SIGKILL; and because
nothing in the microservice replaces its metrics store, gRPC server or metrics server when one
dies, which would leave a pod answering every prediction with an error while it still looks alive.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent

# Sensible for small scikit-learn models: prediction holds the GIL, so processes (workers) give
# parallelism, one per core. Extra threads per worker measured slower here, not faster: at 32
# connections 2x4 served 0.77 of a plain Flask app's requests/s, 2x1 the same (docs/benchmarks.md).
DEFAULTS = {
    # The address every server of the microservice binds: loopback, so that a laptop does not put
    # the model on its network; the image sets 0.0.0.0, which a pod needs.
    "SERVE_HOST": "127.0.0.1",
    "GUNICORN_WORKERS": "2",
    "GUNICORN_THREADS": "1",
    "GRPC_WORKERS": "1",
    "GRPC_THREADS": "1",
}
SHUTDOWN_GRACE_SECONDS = 20.0
# Gunicorn replaces a dead worker within a fraction of a second; every other child of the
# microservice is never replaced. A process count held below its settled value for longer than
# this is a loss that only a restart repairs.
RESPAWN_GRACE_SECONDS = 2.0
# How long the count of child processes must hold still before it becomes the one to keep.
SETTLE_SECONDS = 1.0
POLL_SECONDS = 0.5
# EX_CONFIG in sysexits.h: a port to serve on is taken or the address cannot be bound.
EXIT_CANNOT_BIND = 78
# EX_SOFTWARE in sysexits.h: the microservice lost a process of its own, so the container (or
# `make serve`) must be restarted; distinct from the microservice's own codes and from 128+signal.
EXIT_PROCESS_LOST = 70

# Where prometheus_client (0.8, pinned by seldon-core) keeps the model's metrics across processes.
MULTIPROCESS_DIRECTORY = "prometheus_multiproc_dir"

logger = logging.getLogger("serve")


def microservice_command(arguments: list[str]) -> list[str]:
    """The command line that runs `run_microservice` with `arguments`, in this interpreter."""
    if importlib.util.find_spec("seldon_core") is None:
        raise SystemExit(
            "seldon-core not found: run this file with the serving environment's python"
        )
    start = (
        f"import sys; sys.path.insert(0, {str(PACKAGE_DIR)!r}); "
        "import serve; serve.run_microservice()"
    )
    return [sys.executable, "-c", start, *arguments]


def run_microservice() -> None:
    """Run `seldon-core-microservice` in this process, with the model's metrics store.

    `model_metrics.ModelMetrics` replaces Seldon's `SeldonMetrics`: its lock is kept per process
    (a worker killed while holding Seldon's cross-process lock stopped the whole server in 6 of 31
    kills under load), its metrics are valid Prometheus text, and the model's own metrics (from
    prometheus_client's files in `prometheus_multiproc_dir`) are served beside Seldon's.
    """
    import worker
    from model_metrics import ModelMetrics
    from seldon_core import microservice

    microservice.SeldonMetrics = ModelMetrics
    worker.configure(os.environ.get("SERVE_HOST", DEFAULTS["SERVE_HOST"]))
    sys.argv[0] = "seldon-core-microservice"
    sys.exit(microservice.main())


def ports(argv: list[str], environment: dict[str, str]) -> dict[str, int]:
    """The ports the microservice will listen on, by use, as it reads them (options, then its
    environment variables, then its defaults); gRPC only when it runs."""
    parser = argparse.ArgumentParser(add_help=False)
    for option, variable, default in (
        ("--http-port", "PREDICTIVE_UNIT_HTTP_SERVICE_PORT", "9000"),
        ("--grpc-port", "PREDICTIVE_UNIT_GRPC_SERVICE_PORT", "5000"),
        ("--metrics-port", "PREDICTIVE_UNIT_METRICS_SERVICE_PORT", "6000"),
        ("--grpc-workers", "GRPC_WORKERS", "1"),
    ):
        parser.add_argument(option, type=int, default=int(environment.get(variable, default)))
    known, _ = parser.parse_known_args(argv)
    chosen = {"HTTP": known.http_port, "metrics": known.metrics_port}
    if known.grpc_workers > 0:
        chosen["gRPC"] = known.grpc_port
    return chosen


def unavailable_port(host: str, chosen: dict[str, int]) -> str | None:
    """One line naming the first port that cannot be bound on `host`, or None if all can."""
    for use, port in chosen.items():
        with socket.socket() as probe:
            # As gunicorn binds: a port left in TIME_WAIT by a stopped server is free.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as error:
                return (
                    f"cannot serve {use} on {host}:{port}: {error.strerror}; stop what uses "
                    "the port or choose another (make serve HTTP_PORT=, GRPC_PORT=, METRICS_PORT=)"
                )
    return None


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
    """PIDs of the running children of `pid` (Linux /proc; empty elsewhere, which skips waits)."""
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # A zombie has exited already; it only waits for its parent to collect it.
        if int(fields[1]) == pid and fields[0] != "Z":
            children.add(int(stat.parent.name))
    return children


class Watch:
    """Tell, from successive sets of the microservice's children, when one is lost for good.

    The count of children is the measure: gunicorn replaces a worker under a new PID, so PIDs
    change while the count comes back. The highest count that held still for `settle_seconds` is
    the full strength (`full`); staying below it for longer than `grace_seconds` is a loss.
    """

    def __init__(self, settle_seconds: float, grace_seconds: float) -> None:
        self.settle_seconds = settle_seconds
        self.grace_seconds = grace_seconds
        self.full: set[int] = set()
        self.count = 0
        self.count_since = 0.0
        self.short_since: float | None = None

    def observe(self, children: set[int], now: float) -> set[int]:
        """Take the children seen at `now`; return the PIDs lost for good (empty while healthy)."""
        if len(children) != self.count:
            self.count, self.count_since = len(children), now
        if len(children) >= len(self.full):
            self.short_since = None
            settled = now - self.count_since >= self.settle_seconds
            if len(children) == len(self.full) or settled:
                self.full = children
            return set()
        if self.short_since is None:
            self.short_since = now
        if now - self.short_since > self.grace_seconds:
            return self.full - children
        return set()


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
    # An empty SERVE_HOST would bind every interface: only an explicit 0.0.0.0 does that.
    environment["SERVE_HOST"] = environment["SERVE_HOST"] or DEFAULTS["SERVE_HOST"]
    grace_seconds = float(environment.get("SHUTDOWN_GRACE_SECONDS", SHUTDOWN_GRACE_SECONDS))
    workers = int(environment["GUNICORN_WORKERS"])
    # Checked here, at once: gunicorn would retry a taken port for 5 s, and the supervisor would
    # then report the lost server as a lost process.
    problem = unavailable_port(environment["SERVE_HOST"], ports(argv, environment))
    if problem:
        logger.error("%s", problem)
        return EXIT_CANNOT_BIND
    arguments = ["Model", "--service-type", "MODEL", *argv]
    command = microservice_command(arguments)
    logger.info(
        "starting seldon-core-microservice %s on %s with %s workers x %s threads",
        " ".join(arguments),
        environment["SERVE_HOST"],
        environment["GUNICORN_WORKERS"],
        environment["GUNICORN_THREADS"],
    )
    # The model's metrics: prometheus_client's files, one per process, fresh at every start.
    metrics_directory = tempfile.mkdtemp(prefix="model-metrics-")
    environment[MULTIPROCESS_DIRECTORY] = metrics_directory
    try:
        return supervise(command, environment, workers, grace_seconds)
    finally:
        shutil.rmtree(metrics_directory, ignore_errors=True)


def supervise(
    command: list[str], environment: dict[str, str], workers: int, grace_seconds: float
) -> int:
    """Start the microservice, end it when it loses a process or on a signal; its exit code."""
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
    watch = Watch(SETTLE_SECONDS, RESPAWN_GRACE_SECONDS)
    while child.poll() is None:
        time.sleep(POLL_SECONDS)
        if stopping:
            continue
        watched = len(watch.full)
        lost = watch.observe(children_of(child.pid), time.monotonic())
        if len(watch.full) > watched:
            logger.info(
                "watching %d processes under %d: %s",
                len(watch.full),
                child.pid,
                " ".join(map(str, sorted(watch.full))),
            )
        if lost and not stopping:
            logger.error(
                "process %s of the microservice exited and was not replaced within %.0f s; "
                "stopping the microservice, exit code %d",
                " ".join(map(str, sorted(lost))),
                RESPAWN_GRACE_SECONDS,
                EXIT_PROCESS_LOST,
            )
            stop_group(child.pid, workers, grace_seconds)
            return EXIT_PROCESS_LOST
    code = child.returncode
    if not stopping:
        ended = f"exit code {code}" if code >= 0 else f"signal {-code}"
        logger.error("the microservice's main process %d ended (%s)", child.pid, ended)
    # The main process may exit on its own (a failed start); never leave its children behind.
    stop_group(child.pid, workers, grace_seconds)
    if stopping:
        return 0
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
