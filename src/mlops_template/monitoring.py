"""Monitoring of the served model: dashboard panels, alert rules, and the Kubernetes objects.

One source for each:
- `PANELS` (title, unit, PromQL per line) builds the Grafana dashboard (with Grafana's foundation
  SDK), is what the monitoring test asks a real Prometheus for, and what `make monitor` prints;
- `alert_rules(params)` is the rule group, written as a PrometheusRule for kube-prometheus-stack
  and as a plain rules file for a local Prometheus and `promtool test rules`.

`mlops monitoring` writes the committed copies (monitoring/dashboard.json, monitoring/rules.yml);
a test checks they are what the code renders. The metrics are the model server's
(src/mlops_template/serving/model_metrics.py): one name is one fact, stated there.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlops_template.errors import UserError
from mlops_template.params import DEFAULT_PARAMS, MonitoringParams, load_params, monitoring_params

logger = logging.getLogger(__name__)

DEFAULT_DIR = Path("monitoring")
DASHBOARD_FILE = "dashboard.json"
RULES_FILE = "rules.yml"
DASHBOARD_UID = "mlops-template-model"
DASHBOARD_TITLE = "Model server (mlops-template)"
RULE_GROUP = "mlops-template-model"
# Grafana's own range variable; a plain Prometheus is asked with WINDOW instead.
RATE_INTERVAL = "$__rate_interval"
WINDOW = "1m"
# Series are kept apart per model: kube-prometheus-stack adds this label from the pod's
# `seldon-deployment-id` (the PodMonitor's podTargetLabels); locally it is simply absent.
BY = "seldon_deployment_id"
# And per predictor (`default`, or `canary` while `mlops deploy --canary` observes a new model):
# the pod label the manifest sets, as Prometheus spells it.
PREDICTOR_LABEL = "mlops-template/predictor"
PREDICTOR_BY = "mlops_template_predictor"
# The label kube-prometheus-stack's Prometheus and Grafana select their objects by (defaults).
RELEASE_LABEL = {"release": "kube-prometheus-stack"}
GRAFANA_DASHBOARD_LABEL = {"grafana_dashboard": "1"}
# A share below this counts as this, so that an empty bin's log stays finite.
FLOOR = 0.001


def _ratio(counter: str, by: str, denominator: str, window: str) -> str:
    """Each `by` value's rate of a counter over the rate of a per-model total, within one model."""
    return (
        f"sum by ({BY}, {by}) (rate({counter}[{window}])) / ignoring({by}) group_left "
        f"sum by ({BY}) (rate({denominator}[{window}]))"
    )


def _share(counter: str, by: str, window: str) -> str:
    """Each `by` value's share of a counter's rate, within one model."""
    return _ratio(counter, by, counter, window)


def _input_share(counter: str, window: str) -> str:
    """A per-feature input counter as a share of the rows received."""
    return _ratio(counter, "feature", "model_request_rows_sum", window)


def training_share(gauge: str, by: str) -> str:
    """A training reference gauge, one series per model and `by` value (its replicas agree)."""
    return f"max by ({BY}, {by}) ({gauge})"


def status_share(code: str, window: str) -> str:
    """The share of prediction requests answered with a status class (2xx, 4xx, 5xx)."""
    return (
        f'sum by ({BY}) (rate(model_requests_total{{code="{code}"}}[{window}])) / '
        f"sum by ({BY}) (rate(model_requests_total[{window}]))"
    )


def latency_quantile(quantile: float, window: str) -> str:
    """A quantile of request latency, in seconds."""
    return (
        f"histogram_quantile({quantile}, sum by ({BY}, le) "
        f"(rate(model_request_duration_seconds_bucket[{window}])))"
    )


def predictor_queries(deployment: str, namespace: str, predictor: str, seconds: int) -> dict:
    """Instant queries for one predictor over the last `seconds`: requests, 5xx, p99 latency."""
    selector = f'{BY}="{deployment}", namespace="{namespace}", {PREDICTOR_BY}="{predictor}"'
    window = f"{seconds}s"
    return {
        "requests": f"sum(increase(model_requests_total{{{selector}}}[{window}]))",
        "server_errors": (
            f'sum(increase(model_requests_total{{{selector}, code="5xx"}}[{window}]))'
        ),
        "p99": (
            "histogram_quantile(0.99, sum by (le) "
            f"(rate(model_request_duration_seconds_bucket{{{selector}}}[{window}])))"
        ),
    }


def class_share_gap(window: str) -> str:
    """How far each predicted class's share is from its share of the training rows."""
    return (
        f"abs(({_share('model_predictions_total', 'class', window)}) - on({BY}, class) "
        f"{training_share('model_training_class_share', 'class')})"
    )


def missing_share_increase(window: str) -> str:
    """Each input's missing share above its training missing share."""
    return (
        f"({_input_share('model_input_missing_total', window)}) - on({BY}, feature) "
        f"{training_share('model_training_missing_share', 'feature')}"
    )


def psi(window: str) -> str:
    """Population stability index of each numeric input: its bins now against training."""
    now = (
        f"clamp_min(sum by ({BY}, feature, bin) (rate(model_input_bin_total[{window}])) / "
        f"ignoring(bin) group_left sum by ({BY}, feature) "
        f"(rate(model_input_bin_total[{window}])), {FLOOR})"
    )
    then = f"clamp_min({training_share('model_training_bin_share', 'feature, bin')}, {FLOOR})"
    return f"sum by ({BY}, feature) (({now} - {then}) * ln({now} / {then}))"


@dataclass(frozen=True)
class Panel:
    """One dashboard panel: its lines, each a (legend, PromQL with RATE_INTERVAL) pair."""

    title: str
    unit: str
    lines: tuple[tuple[str, str], ...]
    description: str = ""

    def queries(self, window: str = WINDOW) -> list[str]:
        """The PromQL a plain Prometheus is asked, with a concrete range."""
        return [expr.replace(RATE_INTERVAL, window) for _, expr in self.lines]


def legend(prefix: str, *labels: str) -> str:
    """A Grafana legend: a text, then each label's value ({{label}})."""
    return " ".join([prefix, *(f"{{{{{label}}}}}" for label in labels)]).strip()


R = RATE_INTERVAL
QUANTILES = (0.5, 0.95, 0.99)
ROWS_P95 = f"histogram_quantile(0.95, sum by ({BY}, le) (rate(model_request_rows_bucket[{R}])))"
ROWS_MEAN = (
    f"sum by ({BY}) (rate(model_request_rows_sum[{R}])) / "
    f"sum by ({BY}) (rate(model_request_rows_count[{R}]))"
)
PANELS = (
    Panel(
        "Prediction requests by status",
        "reqps",
        ((legend("", BY, "code"), f"sum by ({BY}, code) (rate(model_requests_total[{R}]))"),),
        "Answered prediction requests per second: 2xx served, 4xx the client's fault, 5xx ours.",
    ),
    Panel(
        "Error shares",
        "percentunit",
        ((legend("5xx", BY), status_share("5xx", R)), (legend("4xx", BY), status_share("4xx", R))),
        "Share of prediction requests answered 5xx (alert: ModelServerErrors) and 4xx "
        "(ModelClientErrorSurge).",
    ),
    Panel(
        "Latency",
        "s",
        tuple((legend(f"p{round(q * 100)}", BY), latency_quantile(q, R)) for q in QUANTILES),
        "From a request's arrival to its answer, in the model server (ModelLatencyHigh: p99).",
    ),
    Panel(
        "Rows per request",
        "short",
        ((legend("mean", BY), ROWS_MEAN), (legend("p95", BY), ROWS_P95)),
    ),
    Panel(
        "Predicted class share, and in training",
        "percentunit",
        (
            (legend("", "class", BY), _share("model_predictions_total", "class", R)),
            (legend("training", "class"), training_share("model_training_class_share", "class")),
        ),
        "A class far from its training share (ModelPredictionShareDrift) means the inputs or "
        "the world changed.",
    ),
    Panel(
        "Missing inputs, share of rows",
        "percentunit",
        (
            (legend("", "feature", BY), _input_share("model_input_missing_total", R)),
            (
                legend("training", "feature"),
                training_share("model_training_missing_share", "feature"),
            ),
        ),
        "ModelMissingInputs: the share above training's.",
    ),
    Panel(
        "Unseen category levels, share of rows",
        "percentunit",
        ((legend("", "feature", BY), _input_share("model_input_unseen_total", R)),),
        "Levels of a categorical input that training never saw (ModelUnseenCategories).",
    ),
    Panel(
        "Input drift (PSI per numeric input)",
        "short",
        ((legend("", "feature", BY), psi(R)),),
        "Population stability index of each numeric input's training-decile bins against "
        "training: below 0.1 stable, above 0.25 a shift (ModelInputDrift).",
    ),
)


def dashboard() -> dict[str, Any]:
    """The Grafana dashboard, built with Grafana's foundation SDK, as JSON-ready data."""
    from grafana_foundation_sdk.builders.dashboard import Dashboard
    from grafana_foundation_sdk.builders.prometheus import Dataquery
    from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
    from grafana_foundation_sdk.cog.encoder import JSONEncoder

    builder = (
        Dashboard(DASHBOARD_TITLE)
        .uid(DASHBOARD_UID)
        .tags(["mlops-template", "seldon", "model"])
        .refresh("30s")
        .time("now-1h", "now")
    )
    for panel in PANELS:
        timeseries = Timeseries().title(panel.title).unit(panel.unit).description(panel.description)
        for index, (legend, expr) in enumerate(panel.lines):
            timeseries = timeseries.with_target(
                Dataquery().expr(expr).legend_format(legend).ref_id(chr(ord("A") + index))
            )
        builder = builder.with_panel(timeseries)
    return json.loads(JSONEncoder(sort_keys=True).encode(builder.build()))


@dataclass(frozen=True)
class Alert:
    """One alerting rule."""

    name: str
    expr: str
    duration: str
    severity: str
    summary: str

    def rule(self) -> dict[str, Any]:
        """As a Prometheus rule."""
        return {
            "alert": self.name,
            "expr": self.expr,
            "for": self.duration,
            "labels": {"severity": self.severity},
            "annotations": {"summary": self.summary},
        }


def alerts(limits: MonitoringParams) -> list[Alert]:
    """The model's alerts, thresholds from params.yaml's `monitoring` section."""
    return [
        Alert(
            "ModelServerErrors",
            f"({status_share('5xx', '5m')}) > {limits.server_error_ratio}",
            "5m",
            "critical",
            f"{{{{ $labels.{BY} }}}}: {{{{ $value | humanizePercentage }}}} of prediction "
            "requests answered 5xx",
        ),
        Alert(
            "ModelClientErrorSurge",
            f"({status_share('4xx', '10m')}) > {limits.client_error_ratio}",
            "10m",
            "warning",
            f"{{{{ $labels.{BY} }}}}: {{{{ $value | humanizePercentage }}}} of prediction "
            "requests answered 4xx: a client sends malformed requests",
        ),
        Alert(
            "ModelLatencyHigh",
            f"{latency_quantile(0.99, '5m')} > {limits.p99_latency_seconds}",
            "10m",
            "warning",
            f"{{{{ $labels.{BY} }}}}: p99 latency {{{{ $value | humanizeDuration }}}}",
        ),
        Alert(
            "ModelPredictionShareDrift",
            f"{class_share_gap('1h')} > {limits.class_share_drift}",
            "30m",
            "warning",
            f"{{{{ $labels.{BY} }}}}: class {{{{ $labels.class }}}} predicted "
            "{{ $value | humanizePercentage }} away from its training share",
        ),
        Alert(
            "ModelInputDrift",
            f"{psi('1h')} > {limits.input_psi}",
            "30m",
            "warning",
            f"{{{{ $labels.{BY} }}}}: input {{{{ $labels.feature }}}} drifted from training "
            '(PSI {{ printf "%.2f" $value }})',
        ),
        Alert(
            "ModelMissingInputs",
            f"({missing_share_increase('1h')}) > {limits.missing_share_increase}",
            "30m",
            "warning",
            f"{{{{ $labels.{BY} }}}}: input {{{{ $labels.feature }}}} missing "
            "{{ $value | humanizePercentage }} more often than in training",
        ),
        Alert(
            "ModelUnseenCategories",
            f"({_input_share('model_input_unseen_total', '1h')}) > {limits.unseen_share}",
            "30m",
            "warning",
            f"{{{{ $labels.{BY} }}}}: {{{{ $value | humanizePercentage }}}} of input "
            "{{ $labels.feature }} are levels training never saw",
        ),
    ]


def alert_rules(limits: MonitoringParams) -> dict[str, Any]:
    """The rule groups, as a Prometheus rules file holds them."""
    return {"groups": [{"name": RULE_GROUP, "rules": [a.rule() for a in alerts(limits)]}]}


def kubernetes_objects(
    name: str, namespace: str, limits: MonitoringParams, selector: dict[str, str]
) -> list[dict[str, Any]]:
    """PodMonitor, PrometheusRule and the dashboard's ConfigMap for one SeldonDeployment."""
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "mlops-template"}
    pod_monitor = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PodMonitor",
        "metadata": {"name": name, "namespace": namespace, "labels": labels | selector},
        "spec": {
            # Seldon's operator labels the pods of a SeldonDeployment with its name, and names
            # the model container's metrics port `metrics`, served at /prometheus.
            "selector": {"matchLabels": {"seldon-deployment-id": name}},
            "podTargetLabels": ["seldon-deployment-id", PREDICTOR_LABEL],
            "podMetricsEndpoints": [{"port": "metrics", "path": "/prometheus", "interval": "15s"}],
        },
    }
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": name, "namespace": namespace, "labels": labels | selector},
        "spec": alert_rules(limits),
    }
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": f"{name}-dashboard",
            "namespace": namespace,
            "labels": labels | GRAFANA_DASHBOARD_LABEL,
        },
        "data": {DASHBOARD_FILE: dashboard_json()},
    }
    return [pod_monitor, rule, config_map]


def dashboard_json() -> str:
    """The dashboard file's text."""
    return json.dumps(dashboard(), indent=2, sort_keys=True) + "\n"


def rules_yaml(limits: MonitoringParams) -> str:
    """The rules file's text."""
    import yaml

    return yaml.safe_dump(alert_rules(limits), sort_keys=False, width=100)


def write_files(directory: Path, limits: MonitoringParams) -> list[Path]:
    """Write monitoring/dashboard.json and monitoring/rules.yml."""
    from mlops_template.files import write_text

    written = []
    for name, text in ((DASHBOARD_FILE, dashboard_json()), (RULES_FILE, rules_yaml(limits))):
        write_text(directory / name, text)
        written.append(directory / name)
    return written


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the command's options."""
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_DIR, help="directory (default: %(default)s)"
    )
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params file")


def run(args: argparse.Namespace) -> int:
    """Entry point for `mlops monitoring`: write the dashboard and rules files."""
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out} is not a directory")
    for path in write_files(args.out, monitoring_params(load_params(args.params))):
        logger.info("wrote %s", path)
    return 0
