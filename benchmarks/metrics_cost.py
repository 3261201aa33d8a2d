"""What the model's own Prometheus metrics cost per request: server CPU with and without them.

Run with `make bench-metrics` after `make run` (needs `wrk`, as benchmarks/serving.py). The same
package is served twice by its entry point, once as shipped and once with MODEL_METRICS=false
(Seldon's own metrics stay), rounds paired and alternated so that load from elsewhere on the
machine falls on both alike. The figure is the servers' CPU per request (all their processes),
for single-row requests and 50-row batches: the drift counters do work per row.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mlops_template.serving import contract
from serving import WRK_SCRIPT, run_wrk, sample_rows, seldon_server

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    """Run the paired rounds and print a Markdown table."""
    from mlops_template.stages.package import serving_sources

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", type=Path, default=REPO / contract.DEFAULT_DIR)
    parser.add_argument("--rounds", type=int, default=6, help="paired rounds per request size")
    parser.add_argument("--seconds", type=int, default=6, help="per wrk run")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--max-requests", type=int, default=50_000, help="per wrk thread and run")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("error: wrk not found: install it (Debian/Ubuntu: apt-get install wrk)")
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as scratch:
        work = Path(scratch)
        package = work / "package"
        shutil.copytree(args.package.resolve(), package)
        for path in serving_sources():  # this working tree's serving code
            shutil.copy2(path, package / path.name)
        script = work / "bench.lua"
        script.write_text(WRK_SCRIPT)
        rows = sample_rows(package, 50)
        bodies = {}
        for size in (1, 50):
            bodies[size] = work / f"body-{size}.json"
            bodies[size].write_text(json.dumps({"data": {"ndarray": rows[:size]}}))
        servers = {"with": seldon_server(package, 2, 1), "without": seldon_server(package, 2, 1)}
        servers["without"].env["MODEL_METRICS"] = "false"
        for name, server in servers.items():
            server.start(work / f"{name}.log")
        cpu: dict[tuple[str, int], list[float]] = {
            (name, size): [] for name in servers for size in bodies
        }
        try:
            for index in range(args.rounds):
                for size, body in bodies.items():
                    order = ("with", "without") if index % 2 == 0 else ("without", "with")
                    for name in order:
                        result = run_wrk(servers[name], body, args.connections, args.seconds,
                                         args.max_requests, script)  # fmt: skip
                        cpu[name, size].append(result["cpu_ms"])
        finally:
            for server in servers.values():
                server.stop()
    print(f"Server CPU per request, ms (median of {args.rounds} paired rounds, "
          f"{args.connections} connections, 2 workers):")  # fmt: skip
    print("| request | without the model's metrics | with them | with / without |")
    print("| --- | ---: | ---: | ---: |")
    for size in bodies:
        without = statistics.median(cpu["without", size])
        with_ = statistics.median(cpu["with", size])
        rounds = [w / o for w, o in zip(cpu["with", size], cpu["without", size], strict=True)]
        print(
            f"| {size} row{'s' if size > 1 else ''} | {without:.2f} | {with_:.2f} | "
            f"{with_ / without:.3f} (paired median {statistics.median(rounds):.3f}) |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
