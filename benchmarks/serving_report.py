"""The serving benchmark's figures as a Markdown section for docs/benchmarks.md, targets checked.

`render(measurements)` is a pure function of what benchmarks/serving.py measured.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import serving_profile

ONNX_SERVER, JOBLIB_SERVER, PLAIN_SERVER = "onnx", "joblib", "plain"
SERVERS = (ONNX_SERVER, JOBLIB_SERVER, PLAIN_SERVER)
LABELS = {ONNX_SERVER: "(a) ONNX", JOBLIB_SERVER: "(b) joblib", PLAIN_SERVER: "(c) plain"}

# The targets the figures are checked against.
TARGET_CONNECTIONS = 8
ONNX_OVER_JOBLIB = 8.0  # (a)/(b) requests/s at TARGET_CONNECTIONS, at least
P50_OVER_FLOOR_MS = 3.0  # (a)'s p50 at 1 connection minus (d), at most
BATCH_OVER_FLOOR = 2.0  # a 1,000-row request served by (a) over (d), at most
SELDON_OVER_PLAIN = 0.85  # (a)/(c) requests/s at TARGET_CONNECTIONS, at least
READY_SECONDS = 5.0  # process start to first answer, at most

Runs = dict[tuple[str, int], list[dict[str, Any]]]


@dataclass
class Image:
    """One image built from a package: its size, how long the build took, or why it failed."""

    size_bytes: int | None = None
    build_seconds: float = 0.0
    error: str = ""


@dataclass
class Measurements:
    """Everything one run measured."""

    command: str  # what reproduces the run
    workers: int
    threads: int
    connections: list[int]
    rounds: int
    seconds: int
    max_requests: int
    # (server, connections) -> one wrk result per round, with the floor measured before it
    runs: Runs
    floor_one: list[float]  # (d), 1 row, ms: matrices built and session.run
    floor_one_run: list[float]  # the same calls' session.run alone
    floor_batch: list[float]  # (d), 1,000 rows
    floor_batch_run: list[float]
    batch: dict[str, list[float]]  # server -> 1,000-row request wall times, ms
    ready: dict[str, list[float]]  # server -> seconds from start to first answer
    differences: dict[str, float]  # "a-b", "a-c": largest probability difference, 1,000 rows
    estimator: str
    n_features: int
    versions: dict[str, str]  # serving environment's libraries
    machine: str
    commit: str
    elapsed_seconds: float = 0.0
    profile: dict[str, dict[str, Any]] | None = None
    profile_requests: int = 0
    images: dict[str, Image] | None = None
    day: str = field(default_factory=lambda: date.today().isoformat())


def paired_ratios(runs: Runs, first: str, second: str, connections: int) -> list[float]:
    """first/second requests/s in each round (the two ran back to back), so that load from
    elsewhere on the machine mostly cancels out."""
    if (first, connections) not in runs:
        return []
    rounds = zip(runs[(first, connections)], runs[(second, connections)], strict=True)
    return [a["rps"] / b["rps"] for a, b in rounds]


def paired_median(runs: Runs, first: str, second: str, connections: int) -> float:
    """The median of `paired_ratios`, NaN when that level was not run."""
    ratios = paired_ratios(runs, first, second, connections)
    return statistics.median(ratios) if ratios else float("nan")


def verdict(ok: bool, value: float) -> str:
    """'met', '**missed**', or 'not measured' for NaN."""
    if value != value:
        return "not measured"
    return "met" if ok else "**missed**"


def plural(count: int, word: str) -> str:
    """'1 round', '4 rounds'."""
    return f"{count} {word}{'' if count == 1 else 's'}"


def joined(values: list[float], digits: int = 2) -> str:
    """Values for a table cell: '0.91, 0.95'."""
    return ", ".join(f"{value:.{digits}f}" for value in values)


def render(m: Measurements) -> str:
    """The Markdown section for docs/benchmarks.md."""
    lines = [
        *introduction(m),
        "",
        *load_table(m),
        "",
        *targets_table(m),
        "",
        *other_measures(m),
    ]
    if m.profile is not None:
        lines += ["", *serving_profile.render(m.profile, m.profile_requests)]
    if m.images is not None:
        lines += ["", *images_table(m.images)]
    return "\n".join(lines)


def introduction(m: Measurements) -> list[str]:
    """The command, the machine and what is compared."""
    minutes = max(1, round(m.elapsed_seconds / 60))
    command, _, comment = m.command.partition("  # ")
    comment = f"{comment}  (about {plural(minutes, 'minute')})".lstrip()
    versions = m.versions
    levels = ", ".join(str(level) for level in m.connections)
    return [
        "## Serving",
        "",
        "```bash",
        "make run            # the package to serve (models/serving)",
        "apt-get install wrk # the load generator",
        f"{command}  # {comment}",
        "```",
        "",
        f"Machine: {m.machine}; wrk, the servers and the in-process timing share the cores, all "
        f"on 127.0.0.1. Model: the package's {m.estimator} on {m.n_features} features "
        f"(onnxruntime {versions['onnxruntime']}, scikit-learn {versions['scikit-learn']}). "
        f"Run on {m.day} at commit {m.commit}.",
        "",
        "What is compared, in one run, rounds interleaved:",
        "",
        f"- **(a) ONNX**: the package served by its entry point (`serve.py`, Seldon Core "
        f"{versions['seldon-core']} microservice), `model.onnx` in ONNX Runtime, "
        f"{plural(m.workers, 'gunicorn worker')} x {plural(m.threads, 'thread')}: schema "
        "validation, metrics and tags included;",
        "- **(b) joblib**: the same model packaged with `runtime: joblib` (`model.joblib` in "
        "scikit-learn), served the same way;",
        f"- **(c) plain**: gunicorn {versions['gunicorn']} + Flask {versions['flask']} with the "
        "same workers and threads, running the same `model.onnx` in an onnxruntime session (one "
        "thread), its two input matrices built from the JSON rows, no validation;",
        "- **(d) in process**: an onnxruntime session on one thread fed the matrices the server "
        "builds (building them included): the floor.",
        "",
        f"Single-row requests with wrk at {levels} connections, {plural(m.rounds, 'round')} of "
        f"{m.seconds} s per level and server (at most {m.max_requests:,} requests per wrk thread "
        "and run). Each round times (d), then runs (a), (b) and (c) back to back in an order "
        "that rotates from round to round; ratios are taken within each round and the median "
        "over rounds is reported, so that load from elsewhere on the shared machine mostly "
        "cancels out. The servers' CPU per request (all their processes, from /proc) is "
        "measured over the same runs.",
    ]


def median_of(m: Measurements, name: str, connections: int, key: str) -> float:
    """Median over the rounds of one wrk figure."""
    return statistics.median(run[key] for run in m.runs[(name, connections)])


def over_floor(m: Measurements, name: str) -> float:
    """Served p50 at one connection minus the in-process time measured just before it."""
    if (name, 1) not in m.runs:
        return float("nan")
    return statistics.median(run["p50_ms"] - run["floor_ms"] for run in m.runs[(name, 1)])


def load_table(m: Measurements) -> list[str]:
    """Requests/s, p50 and p99 per server and level, and the paired ratios."""
    lines = [
        "| connections | (a) ONNX req/s | p50 ms | p99 ms | (b) joblib req/s | p50 ms | p99 ms "
        "| (c) plain req/s | p50 ms | p99 ms | a/b paired | a/c paired |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for connections in m.connections:
        cells = []
        for name in SERVERS:
            cells += [
                f"{median_of(m, name, connections, 'rps'):.0f}",
                f"{median_of(m, name, connections, 'p50_ms'):.2f}",
                f"{median_of(m, name, connections, 'p99_ms'):.2f}",
            ]
        cells += [
            f"{paired_median(m.runs, ONNX_SERVER, JOBLIB_SERVER, connections):.2f}",
            f"{paired_median(m.runs, ONNX_SERVER, PLAIN_SERVER, connections):.2f}",
        ]
        lines.append(f"| {connections} | {' | '.join(cells)} |")
    return lines


def targets_table(m: Measurements) -> list[str]:
    """The figures that have targets, each checked."""
    target = TARGET_CONNECTIONS
    onnx_joblib = paired_median(m.runs, ONNX_SERVER, JOBLIB_SERVER, target)
    onnx_joblib_rounds = joined(paired_ratios(m.runs, ONNX_SERVER, JOBLIB_SERVER, target), 1)
    seldon_plain = paired_median(m.runs, ONNX_SERVER, PLAIN_SERVER, target)
    seldon_plain_rounds = joined(paired_ratios(m.runs, ONNX_SERVER, PLAIN_SERVER, target))
    p50_gap = over_floor(m, ONNX_SERVER)
    p50 = median_of(m, ONNX_SERVER, 1, "p50_ms") if (ONNX_SERVER, 1) in m.runs else p50_gap
    floor_one = statistics.median(m.floor_one)
    floor_batch = statistics.median(m.floor_batch)
    served_batch = statistics.median(m.batch[ONNX_SERVER])
    batch_ratio = served_batch / floor_batch
    ready = statistics.median(m.ready[ONNX_SERVER])
    return [
        "| target | measured | target | |",
        "| --- | ---: | --- | --- |",
        f"| (a)/(b) requests/s at {target} connections, paired | {onnx_joblib:.1f}x "
        f"({onnx_joblib_rounds}) | >= {ONNX_OVER_JOBLIB:g}x "
        f"| {verdict(onnx_joblib >= ONNX_OVER_JOBLIB, onnx_joblib)} |",
        f"| (a) p50 at 1 connection minus (d) | {p50_gap:.2f} ms ({p50:.2f} - {floor_one:.2f}) "
        f"| <= {P50_OVER_FLOOR_MS:g} ms | {verdict(p50_gap <= P50_OVER_FLOOR_MS, p50_gap)} |",
        f"| 1,000-row request: (a) served / (d), medians of {len(m.batch[ONNX_SERVER])} "
        f"| {batch_ratio:.2f}x ({served_batch:.1f} / {floor_batch:.1f} ms) "
        f"| <= {BATCH_OVER_FLOOR:g}x | {verdict(batch_ratio <= BATCH_OVER_FLOOR, batch_ratio)} |",
        f"| (a)/(c) requests/s at {target} connections, paired | {seldon_plain:.2f} "
        f"({seldon_plain_rounds}) | >= {SELDON_OVER_PLAIN:g} "
        f"| {verdict(seldon_plain >= SELDON_OVER_PLAIN, seldon_plain)} |",
        f"| start to first answer, (a), median of {len(m.ready[ONNX_SERVER])} | {ready:.2f} s "
        f"({joined(m.ready[ONNX_SERVER])}) | <= {READY_SECONDS:g} s "
        f"| {verdict(ready <= READY_SECONDS, ready)} |",
    ]


def other_measures(m: Measurements) -> list[str]:
    """The figures without targets that explain the others."""
    # CPU per request is what bounds throughput once the cores are busy, and unlike requests/s
    # it hardly moves with load from elsewhere: the steadier comparison of the servers.
    all_runs = {name: [run for level in m.connections for run in m.runs[(name, level)]]
                for name in SERVERS}  # fmt: skip
    cpu = {name: statistics.median(run["cpu_ms"] for run in all_runs[name]) for name in SERVERS}
    # The busiest processes are the gunicorn workers; the rest is the entry point, gunicorn's
    # arbiter and, for Seldon, its metrics store, gRPC and metrics servers.
    outside = {
        name: statistics.median(sum(run["process_cpu_ms"][m.workers :]) for run in all_runs[name])
        for name in SERVERS
    }
    served_batch = {name: statistics.median(times) for name, times in m.batch.items()}
    ready_joblib = m.ready[JOBLIB_SERVER]
    lines = [
        "| other measures | value |",
        "| --- | ---: |",
        f"| (d) in process, 1 row: matrices + session.run (session.run alone) "
        f"| {statistics.median(m.floor_one):.3f} ms "
        f"({statistics.median(m.floor_one_run):.3f} ms) |",
        f"| (d) in process, 1,000 rows: matrices + session.run (session.run alone) "
        f"| {statistics.median(m.floor_batch):.1f} ms "
        f"({statistics.median(m.floor_batch_run):.1f} ms) |",
        f"| (b) p50 at 1 connection minus (d) | {over_floor(m, JOBLIB_SERVER):.2f} ms |",
        f"| (c) p50 at 1 connection minus (d) | {over_floor(m, PLAIN_SERVER):.2f} ms |",
    ]
    for name in SERVERS:
        lines.append(
            f"| server CPU per single-row request, {LABELS[name]}, all levels (outside the "
            f"{m.workers} workers) | {cpu[name]:.3f} ms ({outside[name]:.3f} ms) |"
        )
    lines += [
        f"| CPU per request (b)/(a) | {cpu[JOBLIB_SERVER] / cpu[ONNX_SERVER]:.1f}x |",
        f"| CPU per request (c)/(a) (the throughput ratio when the cores are saturated) "
        f"| {cpu[PLAIN_SERVER] / cpu[ONNX_SERVER]:.2f} |",
        f"| 1,000-row request: (b) served, median | {served_batch[JOBLIB_SERVER]:.1f} ms |",
        f"| 1,000-row request: (c) served, median | {served_batch[PLAIN_SERVER]:.1f} ms |",
        f"| start to first answer, (b), median of {len(ready_joblib)} "
        f"| {statistics.median(ready_joblib):.2f} s ({joined(ready_joblib)}) |",
        f"| largest probability difference on the 1,000 rows, (a) vs (b) / (a) vs (c) "
        f"| {m.differences['a-b']:.1e} / {m.differences['a-c']:.1e} |",
    ]
    return lines


def images_table(images: dict[str, Image]) -> list[str]:
    """Size (base image included) and build time of each package's image."""
    lines = [
        "Images built by `scripts/build-image.sh` from each package (a build context of the "
        "Dockerfile, .dockerignore and the package as models/serving); size as the engine's "
        "`image inspect` reports it, base image included; build time with whatever layers the "
        "engine had cached:",
        "",
        "| image | size | build |",
        "| --- | ---: | ---: |",
    ]
    for name, image in images.items():
        size = f"{image.size_bytes / 1e6:.0f} MB" if image.size_bytes else f"failed: {image.error}"
        lines.append(f"| {LABELS[name]} package | {size} | {image.build_seconds:.0f} s |")
    onnx, joblib = images[ONNX_SERVER].size_bytes, images[JOBLIB_SERVER].size_bytes
    if onnx and joblib:
        lines.append(f"| (b) - (a) | {(joblib - onnx) / 1e6:.0f} MB ({joblib / onnx:.2f}x (a)) | |")
    return lines
