"""A Locust scenario for the served model, modelled on real traffic (`make load-test`).

Most requests are good ones built from the test split: single rows, and batches of a few to a
few dozen rows. A share (LOAD_TEST_BAD_SHARE) is malformed, as clients get things wrong, and
must be answered 400; anything else counts as a failure. The run fails (exit code 1) when any
good request fails or when the good requests' 95th percentile latency exceeds
LOAD_TEST_P95_MS. `mlops load-test` sets these variables from params.yaml's `load_test`.

Run by hand: `.venv/bin/locust -f loadtest/locustfile.py --host http://127.0.0.1:9000`.
"""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path

from locust import HttpUser, constant_throughput, events, task

REPO = Path(__file__).resolve().parents[1]
ROWS = Path(os.environ.get("LOAD_TEST_ROWS", REPO / "data" / "processed" / "test.csv"))
SCHEMA = ROWS.with_name("schema.json")
BAD_SHARE = float(os.environ.get("LOAD_TEST_BAD_SHARE", "0.1"))
RATE = float(os.environ.get("LOAD_TEST_RATE", "5"))  # requests per second per user
P95_MS = float(os.environ.get("LOAD_TEST_P95_MS", "500"))
# Where the final counts go as JSON (Locust's CSV files can miss the last requests).
SUMMARY = os.environ.get("LOAD_TEST_SUMMARY")
PATH = "/api/v1.0/predictions"
GOOD = "good"  # request names start with this for good requests, `bad` for malformed ones
MAX_BATCH = 50

logger = logging.getLogger("load-test")


def load_rows() -> tuple[list[str], list[list[object]]]:
    """Feature names and the test split's rows as JSON values (null where missing)."""
    import pandas as pd

    schema = json.loads(SCHEMA.read_text())
    names = [feature["name"] for feature in schema["features"]]
    frame = pd.read_csv(ROWS)[names].astype(object)
    rows = [[None if pd.isna(v) else v for v in row] for row in frame.itertuples(index=False)]
    return names, rows


NAMES, TEST_ROWS = load_rows()
NUMERIC = next(
    index for index, f in enumerate(json.loads(SCHEMA.read_text())["features"])
    if f["kind"] == "numeric"
)  # fmt: skip


def malformed(rng: random.Random) -> tuple[str, bytes]:
    """(name, body) of a request a careless client sends."""
    row = list(rng.choice(TEST_ROWS))
    text_row = row.copy()
    text_row[NUMERIC] = "n/a"
    cases = {
        "bad: too few values": {"data": {"ndarray": [row[:-1]]}},
        "bad: text in a number": {"data": {"ndarray": [text_row]}},
        "bad: no rows": {"data": {"ndarray": []}},
        "bad: unknown name": {"data": {"names": [*NAMES[:-1], "colour"], "ndarray": [row]}},
    }
    name = rng.choice([*cases, "bad: not JSON"])
    if name == "bad: not JSON":
        return name, b'{"data": {"ndarray": [[1, 2}}'
    return name, json.dumps(cases[name]).encode()


class Client(HttpUser):
    """One client: a steady rate of requests, most of them good."""

    wait_time = constant_throughput(RATE)

    def on_start(self) -> None:
        self.rng = random.Random()

    @task
    def predict(self) -> None:
        if self.rng.random() < BAD_SHARE:
            name, body = malformed(self.rng)
            expected = 400
        else:
            size = 1 if self.rng.random() < 0.7 else self.rng.randint(2, MAX_BATCH)
            rows = self.rng.sample(TEST_ROWS, min(size, len(TEST_ROWS)))
            name = f"{GOOD}: 1 row" if size == 1 else f"{GOOD}: batch"
            body = json.dumps({"data": {"names": NAMES, "ndarray": rows}}).encode()
            expected = 200
        headers = {"Content-Type": "application/json"}
        with self.client.post(
            PATH, data=body, headers=headers, name=name, catch_response=True
        ) as response:
            if response.status_code == expected:
                response.success()
            else:
                response.failure(f"expected {expected}, got {response.status_code}")


@events.quitting.add_listener
def judge(environment, **_kwargs) -> None:
    """Exit code 1 when a good request failed or the good requests' p95 is over the limit."""
    stats = environment.stats
    good = [entry for entry in stats.entries.values() if entry.name.startswith(GOOD)]
    failed = sum(entry.num_failures for entry in good)
    bad_failed = sum(
        entry.num_failures for entry in stats.entries.values() if not entry.name.startswith(GOOD)
    )
    times: dict[int, int] = {}
    for entry in good:
        for milliseconds, count in entry.response_times.items():
            times[milliseconds] = times.get(milliseconds, 0) + count
    total = sum(times.values())
    p95 = 0.0
    if total:
        seen = 0
        for milliseconds in sorted(times):
            seen += times[milliseconds]
            if seen >= 0.95 * total:
                p95 = float(milliseconds)
                break
    problems = []
    if failed:
        problems.append(f"{failed} good requests failed")
    if bad_failed:
        problems.append(f"{bad_failed} malformed requests were not answered 400")
    if p95 > P95_MS:
        problems.append(f"good requests' p95 latency {p95:.0f} ms is over {P95_MS:.0f} ms")
    if not total:
        problems.append("no good request was answered")
    summary = f"{total} good requests, p95 {p95:.0f} ms (limit {P95_MS:.0f} ms)"
    if SUMMARY:
        bad = sum(e.num_requests for e in stats.entries.values() if not e.name.startswith(GOOD))
        Path(SUMMARY).write_text(
            json.dumps(
                {
                    "requests": stats.total.num_requests,
                    "good": sum(entry.num_requests for entry in good),
                    "bad": bad,
                    "good_failed": failed,
                    "bad_not_400": bad_failed,
                    "good_p95_ms": p95,
                    "p95_limit_ms": P95_MS,
                    "problems": problems,
                },
                indent=2,
            )
            + "\n"
        )
    if problems:
        logger.error("load test failed: %s; %s", "; ".join(problems), summary)
        environment.process_exit_code = 1
    else:
        logger.info("load test passed: %s, no failure", summary)
        environment.process_exit_code = 0
