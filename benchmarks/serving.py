"""Serving benchmark: the ONNX package against the joblib package, a plain app and in-process ONNX.

Run with `make bench-serving` (or `.venv/bin/python benchmarks/serving.py`) after `make run`; add
`--images` to also build both images and compare their sizes (minutes more). Needs `wrk`
(Debian/Ubuntu: `apt-get install wrk`). Everything stays on 127.0.0.1, every server runs in a
process group of its own and is stopped by it, and every load run is bounded in time (--seconds)
and in requests (--max-requests per wrk thread).

(a) the package (`model.onnx` in ONNX Runtime) served by its entry point with the image's default
    workers and threads;
(b) the same model packaged with the joblib runtime (`build_package(runtime="joblib")`), served
    the same way;
(c) a minimal gunicorn + Flask app with the same workers and threads that runs the same
    `model.onnx` in an onnxruntime session, its two input matrices built from the JSON rows with
    no validation: what people write by hand;
(d) in process: an onnxruntime session on one thread, fed the matrices the server builds (their
    building included), the floor.
Rounds of (a), (b) and (c) are interleaved, so load from elsewhere on the machine falls on all
alike; the ratios are what to compare across machines. Below its Seldon/plain target, or with
--profile, the per-request time of (a) and (c) is profiled in process (serving_profile.py). The
figures are printed as a section for docs/benchmarks.md, targets checked (serving_report.py).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import serving_profile
from serving_report import (
    JOBLIB_SERVER,
    ONNX_SERVER,
    PLAIN_SERVER,
    SELDON_OVER_PLAIN,
    TARGET_CONNECTIONS,
    Image,
    Measurements,
    paired_median,
    render,
)

from mlops_template import processes
from mlops_template.serving import contract

log = logging.getLogger("bench-serving")

REPO = Path(__file__).resolve().parents[1]
SERVE_PYTHON = REPO / ".venv-serve" / "bin" / "python"
START_TIMEOUT_SECONDS = 120.0
# The entry point waits up to 20 s (SHUTDOWN_GRACE_SECONDS) for its microservice to stop.
STOP_SECONDS = 30.0
BUILD_TIMEOUT_SECONDS = 1200  # one image build; a first build includes the debootstrap base
BATCH_REQUESTS = 20
FLOOR_CALLS = 100  # in-process single-row predictions timed before each round
# The same graph on the same matrices: (a) and (c) must answer alike. (b) is scikit-learn, held
# to the package stage's parity tolerance.
SAME_GRAPH_TOLERANCE = 1e-9
PARITY_TOLERANCE = 1e-6

# What both (c) and (d) do with the JSON rows: the graph's two inputs, numeric features as float64
# (JSON null becomes NaN) and categorical ones as text (null becomes the imputer's level), with
# one onnxruntime thread per process as in the server.
ONNX_FEEDS = textwrap.dedent(
    """
    import numpy as np, onnxruntime
    from contract import ONNX_FILE, PackageMetadata

    def onnx_session(package):
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return onnxruntime.InferenceSession(
            package + "/" + ONNX_FILE, options, providers=["CPUExecutionProvider"]
        )

    metadata = PackageMetadata.read(package)
    names = metadata.feature_names
    numeric = [names.index(name) for name in metadata.numeric_names]
    categorical = [index for index in range(len(names)) if index not in numeric]
    missing = metadata.missing_level

    def feeds(rows):
        inputs = {}
        if numeric:
            inputs["numeric"] = np.array(
                [[row[i] for i in numeric] for row in rows], dtype=np.float64
            )
        if categorical:
            inputs["categorical"] = np.array(
                [[row[i] if isinstance(row[i], str) else missing for i in categorical]
                 for row in rows],
                dtype=object,
            )
        return inputs
    """
)

# The plain app: what people write when they skip a serving framework.
PLAIN_APP = (
    textwrap.dedent(
        """
        import os, sys
        from flask import Flask, jsonify, request

        package = os.environ["PACKAGE_DIR"]
        sys.path.insert(0, package)
        """
    )
    + ONNX_FEEDS
    + textwrap.dedent(
        """
        session = onnx_session(package)  # in each gunicorn worker, after the fork
        classes = list(metadata.classes)
        app = Flask(__name__)

        @app.route("/api/v1.0/predictions", methods=["POST"])
        def predict():
            rows = request.get_json()["data"]["ndarray"]
            probabilities = session.run(["probabilities"], feeds(rows))[0]
            return jsonify({"data": {"names": classes, "ndarray": probabilities.tolist()}})

        @app.route("/health/ping")
        def ping():
            return "pong"
        """
    )
)

# (d) in the serving environment (the libraries the servers use). It stays running and answers
# "one N" / "batch N" on stdin with N timings in ms, feeds included and session.run alone, so
# floor measurements can be interleaved with the load runs.
FLOOR_SCRIPT = (
    textwrap.dedent(
        """
        import json, sys, time
        package = sys.argv[1]
        sys.path.insert(0, package)
        """
    )
    + ONNX_FEEDS
    + textwrap.dedent(
        """
        session = onnx_session(package)
        rows = json.loads(sys.stdin.readline())

        def timings(batch, count):
            total, run = [], []
            for _ in range(count):
                started = time.perf_counter()
                inputs = feeds(batch)
                built = time.perf_counter()
                session.run(["probabilities"], inputs)
                done = time.perf_counter()
                total.append((done - started) * 1000)
                run.append((done - built) * 1000)
            return {"total": total, "run": run}

        timings(rows[:1], 50)  # warm up
        timings(rows, 2)
        for line in sys.stdin:
            kind, count = line.split()
            print(json.dumps(timings(rows[:1] if kind == "one" else rows, int(count))), flush=True)
        """
    )
)


class Floor:
    """(d), as a subprocess that times in-process predictions on request."""

    def __init__(self, package: Path, rows: list[list[Any]]) -> None:
        self.process = subprocess.Popen(
            [str(SERVE_PYTHON), "-c", FLOOR_SCRIPT, str(package)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.process.stdin.write(json.dumps(rows) + "\n")
        self.one: list[float] = []
        self.one_run: list[float] = []
        self.batch: list[float] = []
        self.batch_run: list[float] = []

    def measure(self, kind: str, count: int) -> float:
        """Time `count` predictions of one row or of the whole batch; return their median."""
        self.process.stdin.write(f"{kind} {count}\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"the in-process timing ended with code {self.process.wait()}")
        times = json.loads(line)
        getattr(self, kind).extend(times["total"])
        getattr(self, f"{kind}_run").extend(times["run"])
        return statistics.median(times["total"])

    def close(self) -> None:
        """End the subprocess."""
        self.process.stdin.close()
        self.process.wait(timeout=30)


# wrk: POST the body, stop each thread after max_requests, print the summary as JSON.
WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = io.open(os.getenv("BENCH_BODY")):read("*a")
local limit = tonumber(os.getenv("BENCH_MAX_REQUESTS"))
local sent = 0
request = function()
  sent = sent + 1
  if sent > limit then wrk.thread:stop() end
  return wrk.format()
end
done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    '{"requests": %d, "seconds": %.6f, "p50_ms": %.4f, "p99_ms": %.4f, "bad": %d}\\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000,
    latency:percentile(99) / 1000,
    errors.status + errors.connect + errors.read + errors.write + errors.timeout))
end
"""


def tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log, for an error message."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def wait_ready(url: str, process: subprocess.Popen, started: float) -> float:
    """Seconds from `started` until `url` answers 200; fail if the process dies first."""
    while time.monotonic() - started < START_TIMEOUT_SECONDS:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with code {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{url} not ready after {START_TIMEOUT_SECONDS} s")


def post(url: str, body: bytes) -> dict[str, Any]:
    """POST a JSON body and return the parsed answer; fail on an HTTP error."""
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


class Server:
    """One server on free loopback ports, in a process group of its own, stopped by it."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], port: int) -> None:
        self.name, self.command, self.env, self.port = name, command, env, port
        self.url = f"http://{processes.HOST}:{port}"
        self.process: subprocess.Popen | None = None
        self.ready_seconds = 0.0

    @property
    def predictions(self) -> str:
        """The prediction endpoint's URL."""
        return f"{self.url}/api/v1.0/predictions"

    def start(self, log_path: Path) -> Server:
        """Start the process group and wait for the first good ping."""
        started = time.monotonic()
        self.process = processes.start(self.command, log_path, self.env)
        try:
            self.ready_seconds = wait_ready(f"{self.url}/health/ping", self.process, started)
        except RuntimeError as error:
            self.stop()
            raise SystemExit(f"{self.name}: {error}; its log ends:\n{tail(log_path)}") from None
        return self

    def stop(self) -> None:
        """SIGTERM the process group; SIGKILL what is left after STOP_SECONDS."""
        if self.process is not None:
            processes.stop(self.process.pid, STOP_SECONDS)
            self.process = None


def seldon_server(package: Path, workers: int, threads: int, name: str = "seldon") -> Server:
    """(a) or (b): the package's entry point, as the image runs it."""
    port = processes.free_port()
    command = [
        str(SERVE_PYTHON), str(package / contract.ENTRY_POINT_FILE), f"--http-port={port}",
        f"--grpc-port={processes.free_port()}", f"--metrics-port={processes.free_port()}",
    ]  # fmt: skip
    env = {**os.environ, "GUNICORN_WORKERS": str(workers), "GUNICORN_THREADS": str(threads)}
    return Server(name, command, env, port)


def plain_server(package: Path, app_dir: Path, workers: int, threads: int) -> Server:
    """(c): gunicorn + Flask with the same model.onnx, workers and threads."""
    port = processes.free_port()
    command = [
        str(SERVE_PYTHON), "-m", "gunicorn", "--bind", f"{processes.HOST}:{port}",
        "--workers", str(workers), "--threads", str(threads), "--chdir", str(app_dir),
        "--log-level", "warning", "plain_app:app",
    ]  # fmt: skip
    return Server(PLAIN_SERVER, command, {**os.environ, "PACKAGE_DIR": str(package)}, port)


def tree_cpu_seconds(root: int) -> dict[int, float]:
    """User + system CPU seconds of a process and each of its descendants (Linux /proc)."""
    parents, cpu = {}, {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        pid = int(stat.parent.name)
        parents[pid] = int(fields[1])
        cpu[pid] = int(fields[11]) + int(fields[12])
    tree, grew = {root}, True
    while grew:
        children = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= children
        grew = bool(children)
    ticks = os.sysconf("SC_CLK_TCK")
    return {pid: cpu[pid] / ticks for pid in tree if pid in cpu}


def run_wrk(
    server: Server, body: Path, connections: int, seconds: int, max_requests: int, script: Path
) -> dict[str, float]:
    """One wrk run against the prediction endpoint: requests/s, p50 and p99 in ms, and the
    server's CPU per request in ms, in all its processes and in each (busiest first)."""
    threads = min(connections, 2)
    command = [
        "wrk", f"--threads={threads}", f"--connections={connections}",
        f"--duration={seconds}s", "--timeout=10s", f"--script={script}", server.predictions,
    ]  # fmt: skip
    env = {**os.environ, "BENCH_BODY": str(body), "BENCH_MAX_REQUESTS": str(max_requests)}
    cpu_before = tree_cpu_seconds(server.process.pid)
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=seconds + 60, check=True
    )
    cpu_after = tree_cpu_seconds(server.process.pid)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["bad"]:
        raise SystemExit(
            f"{server.name}: {result['bad']} failed requests at {connections} connections"
        )
    result["rps"] = result["requests"] / result["seconds"]
    per_request = 1000 / max(result["requests"], 1)
    processes_cpu = [seconds - cpu_before.get(pid, 0.0) for pid, seconds in cpu_after.items()]
    result["process_cpu_ms"] = sorted((seconds * per_request for seconds in processes_cpu),
                                      reverse=True)  # fmt: skip
    result["cpu_ms"] = sum(result["process_cpu_ms"])
    return result


def request_ms(url: str, body: bytes) -> float:
    """Wall time of one request, in ms."""
    started = time.perf_counter()
    post(url, body)
    return (time.perf_counter() - started) * 1000


def sample_rows(package: Path, count: int) -> list[list[Any]]:
    """`count` rows of the raw data (missing values included), in the package's feature order."""
    import pandas as pd

    from mlops_template.params import DEFAULT_PARAMS, data_params, load_params

    names = contract.PackageMetadata.read(package).feature_names
    csv = REPO / data_params(load_params(REPO / DEFAULT_PARAMS)).csv
    frame = pd.read_csv(csv)[names]
    frame = frame.sample(n=count, replace=count > len(frame), random_state=0)
    return [
        [None if pd.isna(v) else v for v in row]
        for row in frame.astype(object).itertuples(index=False)
    ]


def package_stage_arguments() -> argparse.Namespace:
    """The package stage's inputs, read from its command in dvc.yaml (paths from the repo root)."""
    import yaml

    from mlops_template.stages import package as package_stage

    stage = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]["package"]
    words = shlex.split(stage["cmd"])
    parser = argparse.ArgumentParser(prog="mlops package")
    package_stage.add_arguments(parser)
    arguments = parser.parse_args(words[words.index("package") + 1 :])
    for name in ("model", "processed", "metrics", "requirements", "out", "params"):
        setattr(arguments, name, REPO / getattr(arguments, name))
    return arguments


def joblib_package(onnx_package: Path, out_dir: Path) -> Path:
    """The same model packaged with the joblib runtime, from the package stage's inputs."""
    from mlops_template.files import sha256
    from mlops_template.stages.package import build_package

    stage = package_stage_arguments()
    metadata = contract.PackageMetadata.read(onnx_package)
    if sha256(stage.model) != metadata.model_sha256:
        raise SystemExit(
            f"error: {stage.model} is not the model packaged in {onnx_package}: run `make run`"
        )
    build_package(
        stage.model, stage.processed, stage.metrics, stage.requirements, out_dir,
        metadata.max_batch_rows, metadata.estimator, runtime=contract.JOBLIB,
    )  # fmt: skip
    return out_dir


def largest_difference(first: dict[str, Any], second: dict[str, Any]) -> float:
    """Largest absolute difference between two answers' probabilities."""
    import numpy as np

    return float(
        np.max(np.abs(np.array(first["data"]["ndarray"]) - np.array(second["data"]["ndarray"])))
    )


def container_engine() -> str:
    """The engine scripts/build-image.sh picks (docker with a running engine, else podman)."""
    script = REPO / "scripts" / "container-engine.sh"
    done = subprocess.run(
        ["bash", "-c", 'source "$1" && container_engine', "engine", str(script)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip() or "no container engine")
    return done.stdout.strip()


def build_images(packages: dict[str, Path], work: Path) -> dict[str, Image]:
    """Build the image of each package with scripts/build-image.sh, measure it, remove it."""
    try:
        engine = container_engine()
    except RuntimeError as error:
        return {name: Image(error=str(error)) for name in packages}
    return {name: build_image(engine, name, package, work) for name, package in packages.items()}


def build_image(engine: str, name: str, package: Path, work: Path) -> Image:
    """One image from a build context laid out as the repository's: Dockerfile, .dockerignore
    and the package as models/serving."""
    context = work / f"context-{name}"
    shutil.copytree(
        package, context / contract.DEFAULT_DIR, ignore=shutil.ignore_patterns("__pycache__")
    )
    for file in ("Dockerfile", ".dockerignore"):
        shutil.copy2(REPO / file, context / file)
    tag = f"localhost/mlops-template-bench-serving:{name}"
    command = [str(REPO / "scripts" / "build-image.sh"), tag, str(context)]
    build_log = work / f"image-{name}.log"
    log.info("building the %s image with %s", name, engine)
    started = time.monotonic()
    build = processes.start(command, build_log, {**os.environ, "CONTAINER_ENGINE": engine})
    try:
        code = build.wait(timeout=BUILD_TIMEOUT_SECONDS)
        if code != 0:
            raise subprocess.CalledProcessError(code, command)
        image = Image(build_seconds=time.monotonic() - started)
        inspect = subprocess.run(
            [engine, "image", "inspect", "--format", "{{.Size}}", tag],
            capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
        image.size_bytes = int(inspect.stdout.strip())
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, ValueError) as error:
        log.error("the %s image failed: %s; its build log ends:\n%s", name, error, tail(build_log))
        image = Image(build_seconds=time.monotonic() - started, error=type(error).__name__)
    finally:
        processes.stop(build.pid)  # only if still running (a timeout, an interruption)
        subprocess.run([engine, "rmi", "--force", tag], capture_output=True, check=False)
    return image


def machine_description() -> str:
    """CPUs, memory, OS and Python of this machine, in one line."""
    cpu_model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu_model = line.split(":", 1)[1].strip()
            break
    memory = ""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory = f", {int(line.split()[1]) / 2**20:.0f} GiB"
    system = platform.system()
    with open("/etc/os-release", encoding="utf-8") as release:
        for line in release:
            if line.startswith("PRETTY_NAME="):
                system = line.split("=", 1)[1].strip().strip('"')
    python = ".".join(platform.python_version_tuple()[:2])
    cpus = f"{os.cpu_count()} vCPUs" + (f" ({cpu_model})" if cpu_model else "")
    return f"{cpus}{memory}, {system}, Python {python}"


def commit_description() -> str:
    """The short commit, marked when the working tree has changes."""
    from mlops_template.files import git_commit

    commit = git_commit(REPO)
    if commit == "unknown":
        return commit
    changes = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=REPO, capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    return commit[:7] + (" (with uncommitted changes)" if changes else "")


def serving_versions() -> dict[str, str]:
    """Versions of the serving environment's libraries that the figures depend on."""
    names = ["seldon-core", "onnxruntime", "scikit-learn", "gunicorn", "flask"]
    done = subprocess.run(
        [str(SERVE_PYTHON), "-c",
         "import json, sys, importlib.metadata as m; "
         "print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))", *names],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return json.loads(done.stdout)


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", type=Path, default=REPO / contract.DEFAULT_DIR)
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=int, default=6, help="per wrk run")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved runs per level")
    parser.add_argument("--max-requests", type=int, default=50_000, help="per wrk thread and run")
    parser.add_argument("--workers", type=int, help="default: the image's GUNICORN_WORKERS")
    parser.add_argument("--threads", type=int, help="default: the image's GUNICORN_THREADS")
    parser.add_argument(
        "--profile", action="store_true",
        help="profile (a) and (c) in process even when the Seldon/plain target is met",
    )  # fmt: skip
    parser.add_argument("--profile-requests", type=int, default=2000, help="per app profiled")
    parser.add_argument(
        "--images", action="store_true",
        help="also build both images with scripts/build-image.sh and report their sizes",
    )  # fmt: skip
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a Markdown section for docs/benchmarks.md."""
    args = parse_arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    begun = time.monotonic()
    source = package_dir(args.package)
    metadata = contract.PackageMetadata.read(source)
    if metadata.runtime != contract.ONNX:
        raise SystemExit(
            f"error: {source} serves with {metadata.runtime}, not onnx: this benchmark compares "
            "the ONNX package with the joblib one (package.runtime in params.yaml)"
        )
    if shutil.which("wrk") is None:
        raise SystemExit("error: wrk not found: install it (Debian/Ubuntu: apt-get install wrk)")
    defaults = _entry_point_defaults(REPO / "src" / "mlops_template" / "serving")
    args.workers = args.workers or int(defaults["GUNICORN_WORKERS"])
    args.threads = args.threads or int(defaults["GUNICORN_THREADS"])

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as scratch:
        bench = Bench(Path(scratch), args)
        bench.prepare(source, sample_rows(source, 1000))
        measured = bench.measure()
        measurements = Measurements(
            command=command_line(argv), workers=args.workers, threads=args.threads,
            connections=args.connections, rounds=args.rounds, seconds=args.seconds,
            max_requests=args.max_requests, estimator=metadata.estimator,
            n_features=len(metadata.features), versions=serving_versions(),
            machine=machine_description(), commit=commit_description(), **measured,
        )  # fmt: skip
        ratio = paired_median(measurements.runs, ONNX_SERVER, PLAIN_SERVER, TARGET_CONNECTIONS)
        if args.profile or ratio < SELDON_OVER_PLAIN:
            measurements.profile = bench.profile()
            measurements.profile_requests = args.profile_requests
        if args.images:
            measurements.images = build_images(bench.packages, bench.work)
    measurements.elapsed_seconds = time.monotonic() - begun
    print(render(measurements))
    return 0


class Bench:
    """The packages, request bodies and servers of one run, in a scratch directory."""

    def __init__(self, work: Path, args: argparse.Namespace) -> None:
        self.work, self.args = work, args
        self.packages = {ONNX_SERVER: work / "package-onnx", JOBLIB_SERVER: work / "package-joblib"}
        self.one_row, self.batch = work / "one_row.json", work / "batch.json"
        self.wrk_script, self.log = work / "bench.lua", work / "servers.log"
        self.rows: list[list[Any]] = []

    def prepare(self, source: Path, rows: list[list[Any]]) -> None:
        """Both packages, the plain app, wrk's script and the request bodies."""
        copy_with_working_tree_code(source, self.packages[ONNX_SERVER])
        log.info("packaging the same model with the joblib runtime")
        joblib_package(source, self.packages[JOBLIB_SERVER])
        (self.work / "plain_app.py").write_text(PLAIN_APP)
        self.wrk_script.write_text(WRK_SCRIPT)
        self.one_row.write_text(json.dumps({"data": {"ndarray": rows[:1]}}))
        self.batch.write_text(json.dumps({"data": {"ndarray": rows}}))
        self.rows = rows

    def server(self, name: str) -> Server:
        """A new server of one kind, not started."""
        workers, threads = self.args.workers, self.args.threads
        if name == PLAIN_SERVER:
            return plain_server(self.packages[ONNX_SERVER], self.work, workers, threads)
        return seldon_server(self.packages[name], workers, threads, name)

    def measure_ready(self) -> dict[str, list[float]]:
        """Seconds from a cold process start to the first answered prediction, three times."""
        log.info("start to first answer, three times for (a) and (b)")
        ready: dict[str, list[float]] = {ONNX_SERVER: [], JOBLIB_SERVER: []}
        for _ in range(3):
            for name, times in ready.items():
                server = self.server(name).start(self.log)
                try:
                    started = time.monotonic()
                    post(server.predictions, self.one_row.read_bytes())
                    times.append(server.ready_seconds + (time.monotonic() - started))
                finally:
                    server.stop()
        return ready

    def measure(self) -> dict[str, Any]:
        """Everything measured with the servers running, as Measurements fields."""
        ready = self.measure_ready()
        floor = Floor(self.packages[ONNX_SERVER], self.rows)
        servers: dict[str, Server] = {}
        try:
            for name in (ONNX_SERVER, JOBLIB_SERVER, PLAIN_SERVER):
                servers[name] = self.server(name).start(self.log)
            differences = answer_differences(servers, self.batch.read_bytes())
            runs = measure_load(servers, floor, self.one_row, self.wrk_script, self.args)
            batch = measure_batch(servers, floor, self.batch.read_bytes())
        finally:
            for server in servers.values():
                server.stop()
            floor.close()
        return {
            "runs": runs, "batch": batch, "ready": ready, "differences": differences,
            "floor_one": floor.one, "floor_one_run": floor.one_run,
            "floor_batch": floor.batch, "floor_batch_run": floor.batch_run,
        }  # fmt: skip

    def profile(self) -> dict[str, dict[str, Any]]:
        """(a)'s and (c)'s per-request time, in process and under cProfile."""
        requests = self.args.profile_requests
        log.info("profiling (a) and (c) in process, %d requests each", requests)
        package = self.packages[ONNX_SERVER]
        return {
            kind: serving_profile.profile(
                SERVE_PYTHON, kind, package, self.work, self.one_row, requests
            )
            for kind in (serving_profile.SELDON, serving_profile.PLAIN)
        }


def answer_differences(servers: dict[str, Server], body: bytes) -> dict[str, float]:
    """Largest probability differences between the servers' answers to the same rows; fail
    when (a) and (c) differ (the same graph and matrices) or (a) and (b) beyond parity."""
    answers = {name: post(server.predictions, body) for name, server in servers.items()}
    differences = {
        "a-b": largest_difference(answers[ONNX_SERVER], answers[JOBLIB_SERVER]),
        "a-c": largest_difference(answers[ONNX_SERVER], answers[PLAIN_SERVER]),
    }
    if differences["a-c"] > SAME_GRAPH_TOLERANCE or differences["a-b"] > PARITY_TOLERANCE:
        raise SystemExit(f"error: the servers answer differently: {differences}")
    return differences


def measure_load(
    servers: dict[str, Server], floor: Floor, body: Path, script: Path, args: argparse.Namespace
) -> dict[tuple[str, int], list[dict[str, float]]]:
    """Single-row wrk runs, each round the floor then every server back to back; the order of
    the servers rotates from round to round, so a drift in machine speed favours none."""
    runs: dict[tuple[str, int], list[dict[str, float]]] = {}
    names = list(servers)
    for connections in args.connections:
        for index in range(args.rounds):
            log.info("%d connections, round %d of %d", connections, index + 1, args.rounds)
            floor_ms = floor.measure("one", FLOOR_CALLS)
            shift = index % len(names)
            for name in names[shift:] + names[:shift]:
                run = run_wrk(servers[name], body, connections, args.seconds,
                              args.max_requests, script)  # fmt: skip
                run["floor_ms"] = floor_ms
                runs.setdefault((name, connections), []).append(run)
    return runs


def measure_batch(servers: dict[str, Server], floor: Floor, body: bytes) -> dict[str, list[float]]:
    """The 1,000-row request, in process and by each server in turn, BATCH_REQUESTS times."""
    log.info("1,000-row requests, %d times each", BATCH_REQUESTS)
    batch: dict[str, list[float]] = {name: [] for name in servers}
    names = list(servers)
    for index in range(BATCH_REQUESTS):
        floor.measure("batch", 1)
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            batch[name].append(request_ms(servers[name].predictions, body))
    return batch


def package_dir(path: Path) -> Path:
    """The package to serve, resolved; one line and an exit if the pipeline has not written it."""
    source = path.resolve()
    if not (source / contract.METADATA_FILE).is_file():
        raise SystemExit(f"error: {source} has no {contract.METADATA_FILE}: run `make run` first")
    return source


def copy_with_working_tree_code(source: Path, destination: Path) -> None:
    """The package's model, with the serving code of this working tree (what a rerun of the
    package stage would ship), so the figures are those of the code being changed."""
    from mlops_template.stages.package import serving_sources

    shutil.copytree(source, destination)
    for path in serving_sources():
        shutil.copy2(path, destination / path.name)


def command_line(argv: list[str] | None) -> str:
    """The command that reproduces this run (and what it stands for, after `  # `)."""
    arguments = sys.argv[1:] if argv is None else argv
    if not arguments:
        return "make bench-serving  # = .venv/bin/python benchmarks/serving.py"
    return f".venv/bin/python benchmarks/serving.py {shlex.join(arguments)}"


def _entry_point_defaults(folder: Path) -> dict[str, str]:
    """GUNICORN_WORKERS/THREADS defaults of the entry point (the image's too)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("package_serve", folder / "serve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.DEFAULTS


if __name__ == "__main__":
    sys.exit(main())
