"""Slow-client benchmark: the server's worker against gunicorn's sync worker, side by side.

Run with `make bench-slow-clients` (or `.venv/bin/python benchmarks/slow_clients.py`) after
`make run`. Needs `wrk`. The package in models/serving is served twice with this working tree's
serving code, by its entry point with the image's workers and threads: once as the image runs it
(`serve.py`'s bounded worker), once with `SERVE_WORKER=sync` (gunicorn's sync worker, what
seldon-core 1.17.1 runs). For each, in interleaved rounds:

1. single-row throughput and p50 with wrk at 8 connections (the cost of the protection);
2. the time single-row requests take, one after another, while idle clients (connected, nothing
   sent), slow-head clients (half a request line) and slow-body clients (a head and 5 bytes of its
   body) hold connections open: `--stallers` of each kind. A request that takes longer than
   `--patience` seconds counts as stalled.

Everything stays on 127.0.0.1, every server runs in a process group of its own and is stopped by
it, and every load is bounded in time and requests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shlex
import socket
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mlops_template import processes
from mlops_template.serving import contract
from serving import (
    REPO,
    SERVE_PYTHON,
    WRK_SCRIPT,
    Server,
    commit_description,
    copy_with_working_tree_code,
    machine_description,
    package_dir,
    run_wrk,
    sample_rows,
)

log = logging.getLogger("bench-slow-clients")

WORKERS = {"bounded": "the image's worker (serve.py)", "sync": "gunicorn's sync worker"}
CONNECTIONS = 8
PREDICTIONS = "/api/v1.0/predictions"


def server(package: Path, worker: str) -> Server:
    """The package's entry point with the image's defaults and `SERVE_WORKER=worker`."""
    port = processes.free_port()
    command = [
        str(SERVE_PYTHON), str(package / contract.ENTRY_POINT_FILE), f"--http-port={port}",
        f"--grpc-port={processes.free_port()}", f"--metrics-port={processes.free_port()}",
    ]  # fmt: skip
    return Server(worker, command, {**os.environ, "SERVE_WORKER": worker}, port)


@contextlib.contextmanager
def stallers(port: int, count: int, body: bytes) -> Iterator[None]:
    """`count` idle, `count` slow-head and `count` slow-body connections, closed afterwards."""
    head = (
        f"POST {PREDICTIONS} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    opened: list[socket.socket] = []
    try:
        for _ in range(count):
            opened.append(socket.create_connection((processes.HOST, port), timeout=5))
            opened.append(socket.create_connection((processes.HOST, port), timeout=5))
            opened[-1].sendall(f"POST {PREDICTIONS} HTTP/1.1\r\nHost: b".encode())
            opened.append(socket.create_connection((processes.HOST, port), timeout=5))
            opened[-1].sendall(head + body[:5])
        time.sleep(0.5)
        yield
    finally:
        for sock in opened:
            sock.close()


def request_seconds(url: str, body: bytes, patience: float) -> float | None:
    """Seconds one prediction request took, or None if not answered within `patience`."""
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=patience) as response:
            response.read()
    except OSError:
        return None
    return time.monotonic() - started


def measure(args: argparse.Namespace, package: Path, work: Path) -> dict[str, dict[str, Any]]:
    """Every round of both servers, interleaved: wrk figures and latencies beside stallers."""
    rows = sample_rows(package, 1)
    body = json.dumps({"data": {"ndarray": rows}}).encode()
    (work / "one_row.json").write_bytes(body)
    (work / "bench.lua").write_text(WRK_SCRIPT)
    results: dict[str, dict[str, Any]] = {
        name: {"rps": [], "p50_ms": [], "stalled": 0, "answered_ms": []} for name in WORKERS
    }
    servers = {name: server(package, name).start(work / f"{name}.log") for name in WORKERS}
    try:
        for index in range(args.rounds):
            order = list(WORKERS) if index % 2 == 0 else list(WORKERS)[::-1]
            for name in order:
                log.info("round %d of %d: %s", index + 1, args.rounds, name)
                run = run_wrk(servers[name], work / "one_row.json", CONNECTIONS, args.seconds,
                              args.max_requests, work / "bench.lua")  # fmt: skip
                results[name]["rps"].append(run["rps"])
                results[name]["p50_ms"].append(run["p50_ms"])
                with stallers(servers[name].port, args.stallers, body):
                    for _ in range(args.requests):
                        took = request_seconds(servers[name].predictions, body, args.patience)
                        if took is None:
                            results[name]["stalled"] += 1
                        else:
                            results[name]["answered_ms"].append(took * 1000)
    finally:
        for started in servers.values():
            started.stop()
    return results


def render(results: dict[str, dict[str, Any]], args: argparse.Namespace, seconds: float) -> str:
    """The Markdown section for docs/benchmarks.md."""
    bounded, sync = results["bounded"], results["sync"]
    ratios = [b / s for b, s in zip(bounded["rps"], sync["rps"], strict=True)]
    gaps = [b - s for b, s in zip(bounded["p50_ms"], sync["p50_ms"], strict=True)]
    total = args.rounds * args.requests
    lines = [
        "### Slow and idle clients",
        "",
        f"Command: `{command_line()}`",
        f"Machine: {machine_description()}; commit {commit_description()}; "
        f"{args.rounds} interleaved rounds, {seconds:.0f} s in all.",
        "",
        "| | image's worker | gunicorn sync worker |",
        "| --- | --- | --- |",
        f"| single-row requests/s, wrk c={CONNECTIONS}, median | "
        f"{statistics.median(bounded['rps']):,.0f} | {statistics.median(sync['rps']):,.0f} |",
        f"| p50 at c={CONNECTIONS}, median | {statistics.median(bounded['p50_ms']):.2f} ms "
        f"| {statistics.median(sync['p50_ms']):.2f} ms |",
        f"| requests stalled past {args.patience:g} s beside {args.stallers} idle + "
        f"{args.stallers} slow-head + {args.stallers} slow-body clients | "
        f"{bounded['stalled']} of {total} | {sync['stalled']} of {total} |",
        f"| answered ones beside them, median | {median_ms(bounded)} | {median_ms(sync)} |",
        "",
        f"Throughput ratio (image's / sync), per round: {', '.join(f'{r:.2f}' for r in ratios)}"
        f" (median {statistics.median(ratios):.2f}); p50 difference per round: "
        f"{', '.join(f'{g:+.2f}' for g in gaps)} ms.",
    ]
    return "\n".join(lines)


def command_line() -> str:
    """The command that reproduces this run."""
    if len(sys.argv) < 2:
        return "make bench-slow-clients  # = .venv/bin/python benchmarks/slow_clients.py"
    return f".venv/bin/python benchmarks/slow_clients.py {shlex.join(sys.argv[1:])}"


def median_ms(result: dict[str, Any]) -> str:
    """The median answered latency, or a dash when none was answered."""
    answered = result["answered_ms"]
    return f"{statistics.median(answered):.1f} ms" if answered else "-"


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", type=Path, default=REPO / "models" / "serving")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=6, help="per wrk run")
    parser.add_argument("--max-requests", type=int, default=50_000, help="per wrk thread and run")
    parser.add_argument("--stallers", type=int, default=10, help="clients of each stalling kind")
    parser.add_argument("--requests", type=int, default=5, help="timed requests beside them")
    parser.add_argument("--patience", type=float, default=3.0, help="seconds before 'stalled'")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a Markdown section for docs/benchmarks.md."""
    args = parse_arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    begun = time.monotonic()
    source = package_dir(args.package)
    with tempfile.TemporaryDirectory(prefix="bench-slow-clients-") as scratch:
        package = Path(scratch) / "package"
        copy_with_working_tree_code(source, package)
        results = measure(args, package, Path(scratch))
    print(render(results, args, time.monotonic() - begun))
    return 0


if __name__ == "__main__":
    sys.exit(main())
