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
from locust.stats import RequestStats, StatsEntry

REPO = Path(__file__).resolve().parents[1]
ROWS = Path(os.environ.get("LOAD_TEST_ROWS", REPO / "data" / "processed" / "test.parquet"))
SCHEMA = ROWS.with_name("schema.json")
BAD_SHARE = float(os.environ.get("LOAD_TEST_BAD_SHARE", "0.1"))
RATE = float(os.environ.get("LOAD_TEST_RATE", "5"))  # requests per second per user
P95_MS = float(os.environ.get("LOAD_TEST_P95_MS", "500"))
# Where the final counts go as JSON (Locust's CSV files can miss the last requests).
SUMMARY = os.environ.get("LOAD_TEST_SUMMARY")
PATH = "/api/v1.0/predictions"
GOOD = "good"  # request names start with this for good requests, `bad` for malformed ones
MAX_BATCH = 50
MAX_ROWS = 10_000  # rows kept in memory to draw requests from, whatever the size of the split

logger = logging.getLogger("load-test")


def load_rows() -> tuple[list[str], int, list[list[object]]]:
    """Feature names, the first numeric feature's index, and up to MAX_ROWS test rows (null where
    missing), from the process stage's Parquet split or any CSV with the schema's columns."""
    import pandas as pd

    features = json.loads(SCHEMA.read_text())["features"]
    names = [feature["name"] for feature in features]
    numeric = next(index for index, f in enumerate(features) if f["kind"] == "numeric")
    if ROWS.suffix == ".parquet":
        frame = pd.read_parquet(ROWS, columns=names).head(MAX_ROWS)
    else:
        frame = pd.read_csv(ROWS, nrows=MAX_ROWS)[names]
    frame = frame.astype(object)
    rows = [[None if pd.isna(v) else v for v in row] for row in frame.itertuples(index=False)]
    return names, numeric, rows


NAMES, NUMERIC, TEST_ROWS = load_rows()


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


def combined(stats: RequestStats, name: str, entries: list[StatsEntry]) -> StatsEntry:
    """One Locust stats entry adding up `entries` (counts, failures, response times)."""
    total = StatsEntry(stats, name, "")
    for entry in entries:
        total.extend(entry)
    return total


@events.quitting.add_listener
def judge(environment, **_kwargs) -> None:
    """Exit code 1 when a good request failed or the good requests' p95 is over the limit."""
    stats = environment.stats
    entries = list(stats.entries.values())
    good = combined(stats, GOOD, [e for e in entries if e.name.startswith(GOOD)])
    bad = combined(stats, "bad", [e for e in entries if not e.name.startswith(GOOD)])
    p95 = float(good.get_response_time_percentile(0.95))
    problems = []
    if good.num_failures:
        problems.append(f"{good.num_failures} good requests failed")
    if bad.num_failures:
        problems.append(f"{bad.num_failures} malformed requests were not answered 400")
    if p95 > P95_MS:
        problems.append(f"good requests' p95 latency {p95:.0f} ms is over {P95_MS:g} ms")
    if not good.num_requests:
        problems.append("no good request was answered")
    summary = f"{good.num_requests} good requests, p95 {p95:.0f} ms (limit {P95_MS:g} ms)"
    if SUMMARY:
        counts = {
            "requests": stats.total.num_requests,
            "good": good.num_requests,
            "bad": bad.num_requests,
            "good_failed": good.num_failures,
            "bad_not_400": bad.num_failures,
            "good_p95_ms": p95,
            "p95_limit_ms": P95_MS,
            "problems": problems,
        }
        Path(SUMMARY).write_text(json.dumps(counts, indent=2) + "\n")
    if problems:
        logger.error("load test failed: %s; %s", "; ".join(problems), summary)
        environment.process_exit_code = 1
    else:
        logger.info("load test passed: %s, no failure", summary)
        environment.process_exit_code = 0
