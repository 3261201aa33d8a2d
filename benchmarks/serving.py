"""Serving benchmark: the packaged Seldon microservice against a plain gunicorn + Flask app.

Run with `make bench-serving` (or `.venv/bin/python benchmarks/serving.py`) after `make run`.
Needs `wrk` (Debian/Ubuntu: `apt-get install wrk`). Everything stays on 127.0.0.1, and every load
run is bounded in time (--seconds) and in requests (--max-requests per wrk thread).

(a) the package served by its entry point with the image's default workers and threads;
(b) a minimal gunicorn + Flask app that loads the same model file and calls predict_proba on
    `pandas.DataFrame(rows, columns=names)` with the same workers and threads: what the seed
    tutorials write by hand, with no validation;
(c) the in-process predict_proba cost, the floor.
Rounds of (a) and (b) are interleaved, so load from elsewhere on the machine falls on both alike;
the ratios are what to compare across machines.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

from mlops_template.serving import contract

REPO = Path(__file__).resolve().parents[1]
SERVE_PYTHON = REPO / ".venv-serve" / "bin" / "python"
START_TIMEOUT_SECONDS = 120.0

# The plain app: what people write when they skip a serving framework.
PLAIN_APP = textwrap.dedent(
    """
    import os, sys
    import joblib, pandas as pd
    from flask import Flask, jsonify, request

    app = Flask(__name__)
    package = os.environ["PACKAGE_DIR"]
    sys.path.insert(0, package)
    from contract import MODEL_FILE, PackageMetadata
    model = joblib.load(os.path.join(package, MODEL_FILE))
    names = PackageMetadata.read(package).feature_names

    @app.route("/api/v1.0/predictions", methods=["POST"])
    def predict():
        rows = request.get_json()["data"]["ndarray"]
        probabilities = model.predict_proba(pd.DataFrame(rows, columns=names))
        return jsonify({"data": {"names": list(model.classes_), "ndarray": probabilities.tolist()}})

    @app.route("/health/ping")
    def ping():
        return "pong"
    """
)

# In-process floor in the serving environment (the libraries the servers use): build the typed
# frame and call predict_proba. It stays running and answers "one N" / "batch N" on stdin with N
# timings in ms, so floor measurements can be interleaved with the load runs.
FLOOR_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    import joblib, numpy as np, pandas as pd
    package = sys.argv[1]
    sys.path.insert(0, package)
    from contract import MODEL_FILE, PackageMetadata
    metadata = PackageMetadata.read(package)
    names = metadata.feature_names
    numeric = set(metadata.numeric_names)
    model = joblib.load(package + "/" + MODEL_FILE)
    rows = json.loads(sys.stdin.readline())

    def frame(batch):
        columns = dict(zip(names, zip(*batch)))
        return pd.DataFrame({
            name: np.array(columns[name], dtype=float if name in numeric else object)
            for name in names
        }, columns=names)

    def timings(batch, count):
        times = []
        for _ in range(count):
            started = time.perf_counter()
            model.predict_proba(frame(batch))
            times.append((time.perf_counter() - started) * 1000)
        return times

    timings(rows[:1], 20)  # warm up
    for line in sys.stdin:
        kind, count = line.split()
        print(json.dumps(timings(rows[:1] if kind == "one" else rows, int(count))), flush=True)
    """
)


class Floor:
    """The in-process floor, as a subprocess that times predict_proba on request."""

    def __init__(self, package: Path, rows: list[list[Any]]) -> None:
        self.process = subprocess.Popen(
            [str(SERVE_PYTHON), "-c", FLOOR_SCRIPT, str(package)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.process.stdin.write(json.dumps(rows) + "\n")
        self.one: list[float] = []
        self.batch: list[float] = []

    def measure(self, kind: str, count: int) -> None:
        """Time `count` predictions of one row or of the whole batch."""
        self.process.stdin.write(f"{kind} {count}\n")
        self.process.stdin.flush()
        getattr(self, kind).extend(json.loads(self.process.stdout.readline()))

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


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, started: float) -> float:
    """Seconds from `started` until `url` answers 200; fail if the process dies first."""
    while time.monotonic() - started < START_TIMEOUT_SECONDS:
        if process.poll() is not None:
            raise SystemExit(f"server exited with code {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except OSError:
            time.sleep(0.02)
    raise SystemExit(f"{url} not ready after {START_TIMEOUT_SECONDS} s")


def post(url: str, body: bytes) -> dict[str, Any]:
    """POST a JSON body and return the parsed answer; fail on an HTTP error."""
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


class Server:
    """One server process on free loopback ports, stopped with SIGTERM."""

    def __init__(self, name: str, command: list[str], env: dict[str, str], port: int) -> None:
        self.name, self.command, self.env, self.port = name, command, env, port
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None
        self.ready_seconds = 0.0

    def start(self, log: Path) -> Server:
        """Start the process and wait for the first good prediction-ready ping."""
        started = time.monotonic()
        with log.open("ab") as stream:
            self.process = subprocess.Popen(
                self.command, env=self.env, stdout=stream, stderr=subprocess.STDOUT
            )
        self.ready_seconds = wait_ready(f"{self.url}/health/ping", self.process, started)
        return self

    def stop(self) -> None:
        """SIGTERM and wait; SIGKILL after 30 s."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def seldon_server(package: Path, workers: int, threads: int) -> Server:
    """(a): the package's entry point, as the image runs it."""
    port = free_port()
    command = [
        str(SERVE_PYTHON), str(package / "serve.py"), f"--http-port={port}",
        f"--grpc-port={free_port()}", f"--metrics-port={free_port()}",
    ]  # fmt: skip
    env = {**os.environ, "GUNICORN_WORKERS": str(workers), "GUNICORN_THREADS": str(threads)}
    return Server("seldon", command, env, port)


def plain_server(package: Path, app_dir: Path, workers: int, threads: int) -> Server:
    """(b): gunicorn + Flask with the same model file, workers and threads."""
    port = free_port()
    command = [
        str(SERVE_PYTHON), "-m", "gunicorn", "--bind", f"127.0.0.1:{port}",
        "--workers", str(workers), "--threads", str(threads), "--chdir", str(app_dir),
        "--log-level", "warning", "plain_app:app",
    ]  # fmt: skip
    return Server("plain", command, {**os.environ, "PACKAGE_DIR": str(package)}, port)


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of a process and all its descendants (Linux /proc)."""
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
    return sum(cpu.get(pid, 0) for pid in tree) / os.sysconf("SC_CLK_TCK")


def run_wrk(
    server: Server, body: Path, connections: int, seconds: int, max_requests: int, script: Path
) -> dict[str, float]:
    """One wrk run against the prediction endpoint: requests/s, p50 and p99 in ms, and the
    server's CPU per request (all its processes) in ms."""
    threads = min(connections, 2)
    command = [
        "wrk", f"--threads={threads}", f"--connections={connections}",
        f"--duration={seconds}s", "--timeout=10s", f"--script={script}",
        f"{server.url}/api/v1.0/predictions",
    ]  # fmt: skip
    env = {**os.environ, "BENCH_BODY": str(body), "BENCH_MAX_REQUESTS": str(max_requests)}
    cpu_before = tree_cpu_seconds(server.process.pid)
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=seconds + 60, check=True
    )
    cpu_seconds = tree_cpu_seconds(server.process.pid) - cpu_before
    result = json.loads(done.stdout.strip().splitlines()[-1])
    if result["bad"]:
        raise SystemExit(
            f"{server.name}: {result['bad']} failed requests at {connections} connections"
        )
    result["rps"] = result["requests"] / result["seconds"]
    result["cpu_ms"] = cpu_seconds * 1000 / max(result["requests"], 1)
    return result


def request_ms(url: str, body: bytes) -> float:
    """Wall time of one request, in ms."""
    started = time.perf_counter()
    post(url, body)
    return (time.perf_counter() - started) * 1000


def sample_rows(package: Path, count: int) -> list[list[Any]]:
    """`count` rows of the raw data (missing values included), in the package's feature order."""
    import pandas as pd

    names = contract.PackageMetadata.read(package).feature_names
    frame = pd.read_csv(REPO / "data" / "raw" / "penguins.csv")[names]
    frame = frame.sample(n=count, replace=count > len(frame), random_state=0)
    return [
        [None if pd.isna(v) else v for v in row]
        for row in frame.astype(object).itertuples(index=False)
    ]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a Markdown report."""
    from mlops_template.stages.package import serving_sources

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", type=Path, default=REPO / contract.DEFAULT_DIR)
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=int, default=6, help="per wrk run")
    parser.add_argument("--rounds", type=int, default=4, help="paired a/b runs per level")
    parser.add_argument("--max-requests", type=int, default=50_000, help="per wrk thread and run")
    parser.add_argument("--workers", type=int, help="default: the image's GUNICORN_WORKERS")
    parser.add_argument("--threads", type=int, help="default: the image's GUNICORN_THREADS")
    args = parser.parse_args(argv)

    source = args.package.resolve()
    if not (source / contract.METADATA_FILE).is_file():
        raise SystemExit(f"error: {source} has no {contract.METADATA_FILE}: run `make run` first")
    if shutil.which("wrk") is None:
        raise SystemExit("error: wrk not found: install it (Debian/Ubuntu: apt-get install wrk)")
    defaults = _entry_point_defaults(REPO / "src" / "mlops_template" / "serving")
    workers = args.workers or int(defaults["GUNICORN_WORKERS"])
    threads = args.threads or int(defaults["GUNICORN_THREADS"])

    rows = sample_rows(source, 1000)
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as scratch:
        work = Path(scratch)
        # The package's model, with the serving code of this working tree (what a rerun of the
        # package stage would ship), so the figures are those of the code being changed.
        package = work / "package"
        shutil.copytree(source, package)
        for path in serving_sources():
            shutil.copy2(path, package / path.name)
        (work / "plain_app.py").write_text(PLAIN_APP)
        (work / "bench.lua").write_text(WRK_SCRIPT)
        one_row = work / "one_row.json"
        one_row.write_text(json.dumps({"data": {"ndarray": rows[:1]}}))
        batch_body = json.dumps({"data": {"ndarray": rows}}).encode()

        floor = Floor(package, rows)
        log = work / "servers.log"
        ready = []
        for _ in range(3):  # time to ready, from a cold process start, three times
            server = seldon_server(package, workers, threads).start(log)
            started = time.monotonic()
            post(f"{server.url}/api/v1.0/predictions", one_row.read_bytes())
            ready.append(server.ready_seconds + (time.monotonic() - started))
            server.stop()
        servers = {
            "seldon": seldon_server(package, workers, threads).start(log),
            "plain": plain_server(package, work, workers, threads).start(log),
        }
        try:
            for server in servers.values():  # both answer, and answer alike
                post(f"{server.url}/api/v1.0/predictions", one_row.read_bytes())
            results: dict[tuple[str, int], list[dict[str, float]]] = {}
            for connections in args.connections:
                for index in range(args.rounds):
                    # The floor and both servers back to back; which server goes first
                    # alternates, so a drift in machine speed favours neither.
                    floor.measure("one", 100)
                    order = list(servers.items())
                    for name, server in order if index % 2 == 0 else order[::-1]:
                        run = run_wrk(server, one_row, connections, args.seconds,
                                      args.max_requests, work / "bench.lua")  # fmt: skip
                        run["floor_ms"] = statistics.median(floor.one[-100:])
                        results.setdefault((name, connections), []).append(run)
            batch: dict[str, list[float]] = {name: [] for name in servers}
            for _ in range(20):  # 1,000-row request: in process, (a), (b) in turn
                floor.measure("batch", 1)
                for name, server in servers.items():
                    batch[name].append(request_ms(f"{server.url}/api/v1.0/predictions", batch_body))
        finally:
            for server in servers.values():
                server.stop()
            floor.close()

    print(report(results, floor, batch, ready, workers, threads, args))
    return 0


def _entry_point_defaults(folder: Path) -> dict[str, str]:
    """GUNICORN_WORKERS/THREADS defaults of the entry point (the image's too)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("package_serve", folder / "serve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.DEFAULTS


def report(
    results: dict[tuple[str, int], list[dict[str, float]]],
    floor: Floor,
    batch: dict[str, list[float]],
    ready: list[float],
    workers: int,
    threads: int,
    args: argparse.Namespace,
) -> str:
    """The Markdown tables for docs/benchmarks.md, targets checked."""

    def median_of(name: str, connections: int, key: str) -> float:
        return statistics.median(run[key] for run in results[(name, connections)])

    def paired_ratios(connections: int) -> list[float]:
        # Each round ran (a) and (b) back to back: compare within rounds (then take the median),
        # so load from elsewhere on the machine mostly cancels out.
        rounds = zip(results[("seldon", connections)], results[("plain", connections)], strict=True)
        return [a["rps"] / b["rps"] for a, b in rounds]

    lines = [
        f"{workers} gunicorn workers x {threads} threads for both servers; single-row requests; "
        f"{args.rounds} rounds of {args.seconds} s per level and server, (a) and (b) back to "
        "back in each round; medians over the rounds.",
        "",
        "| connections | (a) Seldon req/s | p50 ms | p99 ms | (b) plain req/s | p50 ms | p99 ms "
        "| a/b req/s, paired | all rounds |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    ratios = []
    for connections in args.connections:
        a = {key: median_of("seldon", connections, key) for key in ("rps", "p50_ms", "p99_ms")}
        b = {key: median_of("plain", connections, key) for key in ("rps", "p50_ms", "p99_ms")}
        each = paired_ratios(connections)
        ratios.append(statistics.median(each))
        rounds = ", ".join(f"{ratio:.2f}" for ratio in each)
        lines.append(
            f"| {connections} | {a['rps']:.0f} | {a['p50_ms']:.2f} | {a['p99_ms']:.2f} "
            f"| {b['rps']:.0f} | {b['p50_ms']:.2f} | {b['p99_ms']:.2f} | {ratios[-1]:.2f} "
            f"| {rounds} |"
        )
    floor_one, floor_batch = statistics.median(floor.one), statistics.median(floor.batch)
    served_batch = {name: statistics.median(times) for name, times in batch.items()}
    if 1 in args.connections:
        # Served p50 at one connection minus the in-process cost measured just before it.
        overhead = statistics.median(
            run["p50_ms"] - run["floor_ms"] for run in results[("seldon", 1)]
        )
        plain_overhead = statistics.median(
            run["p50_ms"] - run["floor_ms"] for run in results[("plain", 1)]
        )
    else:
        overhead = plain_overhead = float("nan")
    ready_median = statistics.median(ready)
    batch_ratio = served_batch["seldon"] / floor_batch
    # CPU per request is what bounds throughput once the cores are busy, and unlike requests/s
    # it hardly moves with load from elsewhere: the steadier comparison of the two servers.
    cpu = {
        name: statistics.median(
            run["cpu_ms"] for level in args.connections for run in results[(name, level)]
        )
        for name in ("seldon", "plain")
    }
    cpu_ratio = cpu["plain"] / cpu["seldon"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "**missed**"

    lines += [
        "",
        "| measure | value | target | |",
        "| --- | ---: | --- | --- |",
        f"| (c) in-process predict_proba, 1 row | {floor_one:.2f} ms | floor | |",
        f"| served p50 at 1 connection minus (c), (a) | {overhead:.2f} ms | <= 2 ms "
        f"| {verdict(overhead <= 2)} |",
        f"| served p50 at 1 connection minus (c), (b) | {plain_overhead:.2f} ms | | |",
        f"| a/b throughput, paired, lowest level | {min(ratios):.2f} | >= 0.9 "
        f"| {verdict(min(ratios) >= 0.9)} |",
        f"| server CPU per single-row request, (a), all levels | {cpu['seldon']:.2f} ms | | |",
        f"| server CPU per single-row request, (b), all levels | {cpu['plain']:.2f} ms | | |",
        f"| CPU ratio b/a (throughput ratio when saturated) | {cpu_ratio:.2f} | | |",
        f"| 1,000-row request: in process | {floor_batch:.1f} ms | | |",
        f"| 1,000-row request: (a) served, median of 20 | {served_batch['seldon']:.1f} ms "
        f"({batch_ratio:.2f}x) | <= 2x in process | {verdict(batch_ratio <= 2)} |",
        f"| 1,000-row request: (b) plain, median of 20 | {served_batch['plain']:.1f} ms | | |",
        f"| start to first answer, (a), median of 3 | {ready_median:.2f} s "
        f"({', '.join(f'{r:.2f}' for r in ready)}) | <= 5 s | {verdict(ready_median <= 5)} |",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
