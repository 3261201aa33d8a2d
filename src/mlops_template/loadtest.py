"""`mlops load-test`: the Locust scenario (loadtest/locustfile.py) against a served model.

Headless and bounded: the users, their rate and the duration come from params.yaml's
`load_test`. Writes Locust's CSV files, HTML report and the final counts (`<out>_summary.json`)
next to each other (`--out`), and exits non-zero when a good request fails, a malformed one is
not answered 400, or the good requests' 95th percentile latency is over
`load_test.p95_latency_ms`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import subprocess
import sys
from pathlib import Path

from mlops_template.errors import UserError
from mlops_template.params import DEFAULT_PARAMS, LoadTestParams, load_params, load_test_params

logger = logging.getLogger(__name__)

DEFAULT_LOCUSTFILE = Path("loadtest/locustfile.py")
DEFAULT_OUT = Path("build/load-test")
DEFAULT_ROWS = Path("data/processed/test.parquet")
# Locust stops its users at the end of the run and waits this long for requests in flight.
STOP_TIMEOUT_SECONDS = 10


def locust_command(url: str, params: LoadTestParams, locustfile: Path, out: Path) -> list[str]:
    """The headless Locust command line for one bounded run."""
    return [
        sys.executable, "-m", "locust", "-f", str(locustfile), "--headless",
        "--host", url.rstrip("/"),
        "--users", str(params.users), "--spawn-rate", str(params.spawn_rate),
        "--run-time", f"{params.duration_seconds}s", "--stop-timeout", str(STOP_TIMEOUT_SECONDS),
        "--csv", str(out), "--html", f"{out}.html", "--only-summary",
    ]  # fmt: skip


def load_test(url: str, params: LoadTestParams, locustfile: Path, out: Path, rows: Path) -> int:
    """Run Locust; its exit code (0: every good request answered within the latency limit)."""
    if not locustfile.is_file():
        raise UserError(f"{locustfile} not found (--locustfile)")
    if not rows.is_file():
        raise UserError(f"{rows} not found: run the pipeline (make run) for the test split")
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "LOAD_TEST_ROWS": str(rows),
        "LOAD_TEST_BAD_SHARE": str(params.bad_request_share),
        "LOAD_TEST_RATE": str(params.requests_per_second_per_user),
        "LOAD_TEST_P95_MS": str(params.p95_latency_ms),
        "LOAD_TEST_SUMMARY": f"{out}_summary.json",
    }
    logger.info(
        "load test: %d users x %g requests/s for %d s against %s",
        params.users,
        params.requests_per_second_per_user,
        params.duration_seconds,
        url,
    )
    timeout = params.duration_seconds + STOP_TIMEOUT_SECONDS + 120
    try:
        done = subprocess.run(
            locust_command(url, params, locustfile, out), env=env, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        raise UserError(f"the load test did not end within {timeout} s") from None
    logger.info("report: %s.html, counts: %s_summary.json", out, out)
    return done.returncode


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the command's options."""
    parser.add_argument(
        "--url", default="http://127.0.0.1:9000", help="the model server (default: %(default)s)"
    )
    parser.add_argument("--locustfile", type=Path, default=DEFAULT_LOCUSTFILE)
    parser.add_argument("--rows", type=Path, default=DEFAULT_ROWS, help="rows the requests use")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="CSV and HTML prefix (default: %(default)s)"
    )
    parser.add_argument("--duration", type=int, help="seconds (default: params.yaml)")
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params file")


def run(args: argparse.Namespace) -> int:
    """Entry point for `mlops load-test`."""
    params = load_test_params(load_params(args.params))
    if args.duration is not None:
        if args.duration < 1:
            raise UserError(f"--duration must be at least 1 second, got {args.duration}")
        params = dataclasses.replace(params, duration_seconds=args.duration)
    return load_test(args.url, params, args.locustfile, args.out, args.rows)
