"""The model server's Prometheus metrics, read from the real microservice's metrics port."""

from __future__ import annotations

import bisect
import re
import shutil
import subprocess
from collections import defaultdict
from pathlib import Path

import pytest

from tests.serving.checks import expected_probabilities, metadata_of, raw_rows
from tests.serving.conftest import Server, http, predict

pytestmark = pytest.mark.slow

SAMPLE = re.compile(r"^(?P<name>[a-z_:]+)(\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")
# The series the dashboard and the alerts use; each must be there before any request.
MODEL_SERIES = {
    "model_requests_total",
    "model_request_duration_seconds_bucket",
    "model_request_rows_bucket",
    "model_predictions_total",
    "model_input_missing_total",
    "model_input_unseen_total",
    "model_input_bin_total",
    "model_training_class_share",
    "model_training_missing_share",
    "model_training_bin_share",
}


def scrape(server: Server) -> str:
    """The metrics port's text."""
    status, text = http("GET", f"http://127.0.0.1:{server.metrics_port}/metrics")
    assert status == 200
    return text


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """{(name, labels without worker_id): value}, summed over Seldon's per-worker series."""
    values: dict[tuple[str, frozenset], float] = defaultdict(float)
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if not match:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"] or ""))
        labels.pop("worker_id", None)
        values[match["name"], frozenset(labels.items())] += float(match["value"])
    return values


def value(values: dict, name: str, **labels: str) -> float:
    """One series' value (0 when absent)."""
    return values.get((name, frozenset(labels.items())), 0.0)


def test_the_metrics_are_valid_prometheus_text_with_every_series(server: Server) -> None:
    text = scrape(server)
    names = {name for name, _ in samples(text)}
    assert names >= MODEL_SERIES
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: `make test` installs Prometheus (prometheus package)")
    done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                          text=True, check=False)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_request_is_counted_with_its_rows_classes_and_inputs(
    server: Server, serving_package: Path
) -> None:
    metadata = metadata_of(serving_package)
    rows = raw_rows(serving_package, 40, seed=8)
    unseen = metadata.feature_names.index("island")
    rows[0][unseen] = "Atlantis"  # a level training never saw
    before = samples(scrape(server))

    status, answer = predict(server.url, {"data": {"ndarray": rows}})

    assert status == 200, answer
    after = samples(scrape(server))

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("model_requests_total", code="2xx") == 1
    assert grew("model_request_duration_seconds_count") == 1
    assert grew("model_request_rows_count") == 1
    assert grew("model_request_rows_sum") == len(rows)
    probabilities = expected_probabilities(serving_package, rows)
    for index, label in enumerate(metadata.classes):
        expected = float((probabilities.argmax(axis=1) == index).sum())
        assert grew("model_predictions_total", **{"class": label}) == expected, label
    for position, feature in enumerate(metadata.features):
        column = [row[position] for row in rows]
        assert grew("model_input_missing_total", feature=feature.name) == column.count(None)
        if feature.kind == "categorical":
            new = sum(1 for v in column if v is not None and v not in feature.categories)
            assert grew("model_input_unseen_total", feature=feature.name) == new
        elif feature.name in metadata.reference.bins:
            edges = metadata.reference.bins[feature.name].edges
            counts: dict[int, int] = defaultdict(int)
            for v in column:
                if v is not None:
                    counts[bisect.bisect_right(edges, float(v))] += 1
            for index in range(len(edges) + 1):
                got = grew("model_input_bin_total", feature=feature.name, bin=str(index))
                assert got == counts[index], (feature.name, index)


def test_a_bad_request_counts_as_4xx_and_nothing_else(server: Server) -> None:
    before = samples(scrape(server))

    status, _ = predict(server.url, {"data": {"ndarray": []}})

    assert status == 400
    after = samples(scrape(server))
    assert (
        value(after, "model_requests_total", code="4xx")
        - value(before, "model_requests_total", code="4xx")
        == 1
    )
    for name in ("model_request_rows_count", "model_predictions_total"):
        grown = sum(v for (n, _), v in after.items() if n == name) - sum(
            v for (n, _), v in before.items() if n == name
        )
        assert grown == 0, name


def test_the_training_reference_is_exposed_for_the_alerts(
    server: Server, serving_package: Path
) -> None:
    reference = metadata_of(serving_package).reference
    values = samples(scrape(server))
    for label, share in reference.class_shares.items():
        assert value(values, "model_training_class_share", **{"class": label}) == share
    for name, share in reference.missing_shares.items():
        assert value(values, "model_training_missing_share", feature=name) == share
    for name, bins in reference.bins.items():
        for index, share in enumerate(bins.shares):
            assert value(values, "model_training_bin_share", feature=name, bin=str(index)) == share
