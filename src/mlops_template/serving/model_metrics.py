"""The model server's Prometheus metrics: requests, latency, rows, predictions and input drift.

They are recorded with prometheus_client in its multiprocess mode (each gunicorn worker writes
its own memory-mapped file: no round trip to another process per request) and served on
Seldon's metrics port beside Seldon's own metrics, by `ModelMetrics`, the class `serve.py` gives
Seldon for its metrics store. `serve.py` also creates the directory the files go to and sets
`prometheus_multiproc_dir` before anything imports prometheus_client.

Names follow Prometheus conventions: base units in names, `_total` counters, and labels whose
values are bounded by the package (classes, feature names, bin numbers): never a raw input value.

Runs in the serving environment (copied into the package).
"""

from __future__ import annotations

import bisect
import glob
import os
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from contract import NUMERIC, PackageMetadata
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, exposition
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from seldon_core.metrics import SeldonMetrics
from serve import MULTIPROCESS_DIRECTORY

# MODEL_METRICS=false turns this module's metrics off (Seldon's own stay).
ENABLED = "MODEL_METRICS"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ROWS_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
# Up to this many rows, a request's bins are counted row by row in Python.
SMALL_BATCH_ROWS = 8
# Help text for Seldon's feedback counters, which Seldon leaves without any.
SELDON_HELP = {
    "seldon_api_model_feedback_reward": "Sum of the rewards sent as feedback",
    "seldon_api_model_feedback": "Feedback requests received",
}

REQUESTS = Counter(
    "model_requests_total", "Prediction requests answered, by status class.", ["code"]
)
LATENCY = Histogram(
    "model_request_duration_seconds",
    "Time from a prediction request's arrival to its answer.",
    buckets=LATENCY_BUCKETS,
)
ROWS = Histogram(
    "model_request_rows", "Rows in each prediction request answered.", buckets=ROWS_BUCKETS
)
PREDICTIONS = Counter(
    "model_predictions_total", "Rows predicted, by the most probable class.", ["class"]
)
MISSING = Counter("model_input_missing_total", "Missing values received, by feature.", ["feature"])
UNSEEN = Counter(
    "model_input_unseen_total",
    "Categorical values received that training never saw, by feature.",
    ["feature"],
)
BINS = Counter(
    "model_input_bin_total",
    "Numeric values received, by feature and by the bin of training deciles they fall in.",
    ["feature", "bin"],
)
TRAINING_CLASS = Gauge(
    "model_training_class_share",
    "Share of each class among the training rows.",
    ["class"],
    multiprocess_mode="max",
)
TRAINING_MISSING = Gauge(
    "model_training_missing_share",
    "Share of missing values in the training rows, by feature.",
    ["feature"],
    multiprocess_mode="max",
)
TRAINING_BIN = Gauge(
    "model_training_bin_share",
    "Share of the training values in each bin of training deciles, by feature.",
    ["feature", "bin"],
    multiprocess_mode="max",
)


def enabled() -> bool:
    """Whether this model's metrics are recorded (MODEL_METRICS is not false)."""
    return os.environ.get(ENABLED, "true").strip().lower() not in ("false", "0", "no", "off")


def status_class(status: int) -> str:
    """200 -> '2xx': the bounded label of a status code."""
    return f"{status // 100}xx"


class Recorder:
    """Records one model's request, prediction and input metrics; children resolved once."""

    def __init__(self, metadata: PackageMetadata) -> None:
        """Resolve every labelled series and set the training reference gauges."""
        self.on = enabled()
        reference = metadata.reference
        self.predictions = [PREDICTIONS.labels(label) for label in metadata.classes]
        self.requests = {code: REQUESTS.labels(code) for code in ("2xx", "4xx", "5xx")}
        self.numeric = []
        self.categorical = []
        for feature in metadata.features:
            missing = MISSING.labels(feature.name)
            if feature.kind == NUMERIC:
                bins = reference.bins.get(feature.name)
                edges = np.asarray(bins.edges if bins else (), dtype=float)
                counters = [BINS.labels(feature.name, str(i)) for i in range(edges.size + 1)]
                self.numeric.append((feature.name, edges, edges.tolist(), counters, missing))
            else:
                known = frozenset(feature.categories)
                self.categorical.append((feature.name, known, missing, UNSEEN.labels(feature.name)))
        if not self.on:
            return
        for label, share in reference.class_shares.items():
            TRAINING_CLASS.labels(label).set(share)
        for name, share in reference.missing_shares.items():
            TRAINING_MISSING.labels(name).set(share)
        for name, bins in reference.bins.items():
            for index, share in enumerate(bins.shares):
                TRAINING_BIN.labels(name, str(index)).set(share)

    def request(self, status: int, seconds: float) -> None:
        """One prediction request answered with `status` after `seconds`."""
        if not self.on:
            return
        counter = self.requests.get(status_class(status))
        if counter is None:
            counter = REQUESTS.labels(status_class(status))
        counter.inc()
        LATENCY.observe(seconds)

    def predicted(self, columns: dict[str, np.ndarray], probabilities: np.ndarray) -> None:
        """Rows, predicted classes and input summaries of one answered request.

        `columns` are the typed inputs (messages.typed_columns): float arrays with NaN for
        missing, object arrays of text with NaN for missing. A few rows are counted one by one,
        a batch with numpy: a few tens of microseconds for a single row.
        """
        if not self.on:
            return
        ROWS.observe(len(probabilities))
        if len(probabilities) <= SMALL_BATCH_ROWS:
            self._predicted_few(columns, probabilities)
        else:
            self._predicted_many(columns, probabilities)
        for name, known, missing, unseen in self.categorical:
            values = columns[name]
            texts = [value for value in values if value.__class__ is str]
            absent = len(values) - len(texts)
            new = len(texts) - sum(map(known.__contains__, texts))
            if absent:
                missing.inc(absent)
            if new:
                unseen.inc(new)

    def _predicted_few(self, columns: dict[str, np.ndarray], probabilities: np.ndarray) -> None:
        """Classes and numeric bins of a few rows, one by one (numpy's calls cost more here)."""
        for index in probabilities.argmax(axis=1).tolist():
            self.predictions[index].inc()
        for name, _, edges, counters, missing in self.numeric:
            for value in columns[name].tolist():
                if value != value:  # NaN: missing
                    missing.inc()
                else:
                    counters[bisect.bisect_right(edges, value)].inc()

    def _predicted_many(self, columns: dict[str, np.ndarray], probabilities: np.ndarray) -> None:
        """Classes and numeric bins of a batch, counted by numpy, one increment per series."""
        for index, count in _nonzero(np.bincount(probabilities.argmax(axis=1))):
            self.predictions[index].inc(count)
        for name, edges, _, counters, missing in self.numeric:
            values = columns[name]
            absent = np.isnan(values)
            if absent.any():
                missing.inc(int(absent.sum()))
                values = values[~absent]
            for index, count in _nonzero(np.bincount(np.searchsorted(edges, values, "right"))):
                counters[index].inc(count)


def _nonzero(counts: np.ndarray) -> Iterator[tuple[int, int]]:
    for index in np.flatnonzero(counts):
        yield int(index), int(counts[index])


class ModelMetrics(SeldonMetrics):
    """Seldon's cross-worker metrics store, with two changes, and this model's metrics beside it.

    - The lock that guards the store is kept per process. Seldon's lives in the store's process:
      a worker killed while holding it never released it, and every other process then waited
      forever (no prediction, probe or scrape answered again). Each process writes only its own
      entry of the store, so threads of one process are all that need to wait for each other.
    - Series of one metric are exposed as one metric family. Seldon exposes each as a family of
      its own, a second TYPE line for the same name, which the Prometheus text format forbids.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Seldon's store, locked per process."""
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()

    def update(self, custom_metrics: list[dict], method: str) -> None:
        """Store custom metrics a response carries; this model's never carry any.

        Seldon calls this after every request. Its own version reads and writes this process's
        entry in the store even when there is nothing to add: two round trips to the store's
        process per request, for nothing (this model records its metrics in its own process).
        """
        if custom_metrics:
            super().update(custom_metrics, method)

    def collect(self) -> Iterable[Metric]:
        """Seldon's series, one family per metric name, each with a HELP line."""
        families: dict[tuple[str, str], Metric] = {}
        for family in super().collect():
            merged = families.setdefault((family.name, family.type), family)
            if merged is not family:
                merged.samples.extend(family.samples)
            # Seldon gives its feedback counters no help text, which promtool flags.
            merged.documentation = merged.documentation or SELDON_HELP.get(
                family.name, "Seldon Core metric"
            )
        return list(families.values())

    def generate_metrics(self) -> tuple[str, str]:
        """The text Seldon's metrics port serves: its metrics and this model's."""
        registry = CollectorRegistry()
        registry.register(self)
        directory = os.environ.get(MULTIPROCESS_DIRECTORY)
        if directory and os.path.isdir(directory):
            StartedFilesCollector(registry, path=directory)
        return exposition.generate_latest(registry).decode("utf-8"), exposition.CONTENT_TYPE_LATEST


class StartedFilesCollector(MultiProcessCollector):
    """prometheus_client's multiprocess collector, skipping files a process has only just created.

    A new worker creates its file empty and only then sizes it. prometheus_client 0.8 (what
    seldon-core 1.17.1 pins) reads such a file as a corrupt one and the scrape fails with HTTP
    500; the file holds no sample yet, so skipping it loses nothing. A file gone before its size
    is read is skipped too.
    """

    HEADER_BYTES = 8  # what a sized file starts with: its used length, then padding

    def collect(self) -> Iterable[Metric]:
        """The merged samples of every file that has been sized."""
        files = []
        for path in glob.glob(os.path.join(self._path, "*.db")):
            try:
                if os.path.getsize(path) >= self.HEADER_BYTES:
                    files.append(path)
            except OSError:
                continue
        return self.merge(files, accumulate=True)
