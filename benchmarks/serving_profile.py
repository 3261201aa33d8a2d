"""Where a served request's time goes: cProfile of the Seldon app and of the plain app, in process.

Used by benchmarks/serving.py. Each app is built in the serving environment as its server builds
it (the Seldon one by `seldon_core.wrapper.get_rest_microservice` with the package's `Model` and
`ModelMetrics`, as `serve.py` starts the microservice; the plain one by importing it), and its
Flask WSGI callable is called directly on prebuilt single-row requests: gunicorn's HTTP handling,
the same for both servers, is left out. Timed first without the profiler, then under cProfile;
own time is summed by library, with time in C built-ins given to the library that called them.
"""

from __future__ import annotations

import json
import re
import subprocess
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any

SELDON, PLAIN = "seldon", "plain"
TIMED_BLOCKS = 3
WARM_UP_REQUESTS = 200
TOP_FUNCTIONS = 12
# Columns of a profiled function: file, line, name, calls, own s, inclusive s, callers.
OWN, INCLUSIVE = 4, 5
# Functions holding more of the total than this are the WSGI entry and the request dispatch.
DISPATCH_SHARE = 0.8
PROFILE_TIMEOUT_SECONDS = 600

PROFILE_SCRIPT = textwrap.dedent(
    """
    import cProfile, json, logging, os, statistics, sys, tempfile, time
    kind, package, work, body_path = sys.argv[1:5]
    count, warm_up, blocks = (int(value) for value in sys.argv[5:8])
    sys.path[:0] = [package, work]
    os.environ["PACKAGE_DIR"] = package
    from serve import MULTIPROCESS_DIRECTORY
    os.environ[MULTIPROCESS_DIRECTORY] = tempfile.mkdtemp(prefix="metrics-", dir=work)
    # As the microservice logs: INFO and above (here to nowhere).
    logging.basicConfig(level=logging.INFO, stream=open(os.devnull, "w"))
    if kind == "seldon":
        os.chdir(package)  # serve.py runs the microservice there
        import Model
        from model_metrics import ModelMetrics
        from seldon_core import wrapper
        app = wrapper.get_rest_microservice(Model.Model(), ModelMetrics(worker_id_func=os.getpid))
    else:
        from plain_app import app
    from werkzeug.test import EnvironBuilder

    with open(body_path, "rb") as stream:
        body = stream.read()
    statuses = set()

    def start_response(status, headers, exc_info=None):
        statuses.add(status)

    def requests(n):
        return [
            EnvironBuilder(path="/api/v1.0/predictions", method="POST", data=body,
                           content_type="application/json").get_environ()
            for _ in range(n)
        ]

    def serve(batch):
        for environ in batch:
            b"".join(app(environ, start_response))

    serve(requests(warm_up))
    wall, cpu = [], []
    for _ in range(blocks):
        batch = requests(count)
        started, started_cpu = time.perf_counter(), time.process_time()
        serve(batch)
        wall.append((time.perf_counter() - started) * 1000 / count)
        cpu.append((time.process_time() - started_cpu) * 1000 / count)
    batch = requests(count)
    profiler = cProfile.Profile()
    profiler.enable()
    serve(batch)
    profiler.disable()
    profiler.create_stats()
    if statuses != {"200 OK"}:
        sys.exit(f"answers other than 200: {statuses}")
    functions = [
        [file, line, name, calls, own, inclusive,
         [[c_file, c_line, c_name, c_stats[2]] for (c_file, c_line, c_name), c_stats
          in callers.items()]]
        for (file, line, name), (_, calls, own, inclusive, callers) in profiler.stats.items()
    ]
    print(json.dumps({
        "wall_ms": statistics.median(wall), "cpu_ms": statistics.median(cpu),
        "functions": functions,
    }))
    """
)


def profile(
    python: Path, kind: str, package: Path, work: Path, body: Path, requests: int
) -> dict[str, Any]:
    """Time and profile `requests` requests through one app; the script's JSON answer."""
    arguments = [kind, package, work, body, requests, WARM_UP_REQUESTS, TIMED_BLOCKS]
    done = subprocess.run(
        [str(python), "-c", PROFILE_SCRIPT, *(str(argument) for argument in arguments)],
        capture_output=True, text=True, timeout=PROFILE_TIMEOUT_SECONDS, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise SystemExit(f"profiling the {kind} app failed:\n{done.stderr[-3000:]}")
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    answer["requests"] = requests
    answer["package"] = str(package)
    answer["work"] = str(work)
    return answer


def library(file: str, profile_run: dict[str, Any]) -> str:
    """Which library a function belongs to, from its file."""
    if file == "~":
        return "C built-ins"
    path = Path(file)
    if "site-packages" in path.parts:
        name = path.parts[path.parts.index("site-packages") + 1]
        return {"google": "protobuf"}.get(name, name.removesuffix(".py"))
    for folder in (profile_run["package"], profile_run["work"]):
        if file.startswith(folder):
            return path.name
    match = re.search(r"/lib/python3\.\d+/([^/]+)", file)
    if match:
        return f"python: {match.group(1).removesuffix('.py')}"
    return "python: other"


def by_library(profile_run: dict[str, Any]) -> dict[str, float]:
    """Own time per request in µs, summed by library; C built-ins go to their callers' library
    (onnxruntime's session.run stays onnxruntime)."""
    totals: dict[str, float] = defaultdict(float)
    requests = profile_run["requests"]
    for file, _, name, _, own, _, callers in profile_run["functions"]:
        if file != "~" or "onnxruntime" in name:
            where = "onnxruntime" if "onnxruntime" in name else library(file, profile_run)
            totals[where] += own
            continue
        attributed = 0.0
        for caller_file, _, _, caller_own in callers:
            totals[library(caller_file, profile_run)] += caller_own
            attributed += caller_own
        totals["C built-ins"] += max(own - attributed, 0.0)
    return {where: seconds * 1e6 / requests for where, seconds in totals.items()}


def function_name(file: str, line: int, name: str, profile_run: dict[str, Any]) -> str:
    """`folder/file.py:line(name)` (the package's files without their folder), or the built-in's
    own name."""
    if file == "~":
        return name
    path = Path(file)
    if file.startswith((profile_run["package"], profile_run["work"])):
        return f"{path.name}:{line}({name})"
    return f"{path.parent.name}/{path.name}:{line}({name})"


def top_functions(profile_run: dict[str, Any], column: int, below: float) -> list[list[Any]]:
    """The TOP_FUNCTIONS largest by own (OWN) or inclusive (INCLUSIVE) time, those holding
    `below` of the total or more left out."""
    total = sum(function[OWN] for function in profile_run["functions"])
    chosen = sorted(
        (f for f in profile_run["functions"] if f[column] < below * total),
        key=lambda function: function[column],
        reverse=True,
    )
    return chosen[:TOP_FUNCTIONS]


def render(profiles: dict[str, dict[str, Any]], requests: int) -> list[str]:
    """Markdown: per-request time of both apps, by library, and the Seldon app's top costs."""
    seldon, plain = profiles[SELDON], profiles[PLAIN]
    seldon_libraries, plain_libraries = by_library(seldon), by_library(plain)
    profiled = {
        name: sum(libraries.values())
        for name, libraries in ((SELDON, seldon_libraries), (PLAIN, plain_libraries))
    }
    lines = [
        f"Where a single-row request's time goes in process ({requests:,} requests per app; each "
        "app's Flask WSGI callable called directly, so gunicorn's HTTP handling, the same for "
        "both servers, is left out; cProfile slows Python code more than C code, so its "
        "figures are shares, the unprofiled ones the cost):",
        "",
        "| per request | (a) Seldon app | (c) plain app |",
        "| --- | ---: | ---: |",
        f"| wall, no profiler (median of {TIMED_BLOCKS} blocks) | {seldon['wall_ms']:.3f} ms "
        f"| {plain['wall_ms']:.3f} ms |",
        f"| CPU, no profiler | {seldon['cpu_ms']:.3f} ms | {plain['cpu_ms']:.3f} ms |",
        f"| under cProfile | {profiled[SELDON] / 1000:.3f} ms | {profiled[PLAIN] / 1000:.3f} ms |",
        "",
        "| own time under cProfile, by library | (a) us/request | (a) share | (c) us/request |",
        "| --- | ---: | ---: | ---: |",
    ]
    for where in sorted(seldon_libraries, key=seldon_libraries.get, reverse=True):
        own = seldon_libraries[where]
        if own < 0.005 * profiled[SELDON]:
            continue
        lines.append(
            f"| {where} | {own:.0f} | {own / profiled[SELDON]:.0%} "
            f"| {plain_libraries.get(where, 0.0):.0f} |"
        )
    tables = (
        (OWN, "own time", 1.0, ":"),
        (INCLUSIVE, "inclusive time (the function and what it calls)", DISPATCH_SHARE,
         f"; the WSGI entry and the request dispatch, above {DISPATCH_SHARE:.0%} of the total, "
         "left out:"),
    )  # fmt: skip
    for column, title, below, note in tables:
        lines += [
            "",
            f"The Seldon app's largest costs by {title}, under cProfile{note}",
            "",
            "| function | own us/request | inclusive us/request | calls/request |",
            "| --- | ---: | ---: | ---: |",
        ]
        for file, line, name, calls, own, inclusive, _ in top_functions(seldon, column, below):
            lines.append(
                f"| `{function_name(file, line, name, seldon)}` | {own * 1e6 / requests:.0f} "
                f"| {inclusive * 1e6 / requests:.0f} | {calls / requests:.1f} |"
            )
    return lines
