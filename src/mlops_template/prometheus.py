"""`mlops monitor`: a local Prometheus scraping `make serve`, with the model's alert rules loaded.

Debian's `prometheus` package provides the binary (`make monitor` installs it with apt-get).
Everything listens on 127.0.0.1; its data and configuration live in `.monitor/` (git-ignored).
It prints the URL and the dashboard's queries, then runs in the foreground until Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

from mlops_template import monitoring
from mlops_template.errors import UserError
from mlops_template.params import DEFAULT_PARAMS, MonitoringParams, load_params, monitoring_params

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
DEFAULT_DIR = Path(".monitor")
CONFIG_FILE = "prometheus.yml"

# Prometheus' own port, as its documentation and `make monitor` give it.
DEFAULT_PORT = 9090


def configuration(metrics_port: int, scrape_seconds: float) -> dict[str, Any]:
    """A Prometheus configuration scraping the model server's metrics port on 127.0.0.1."""
    return {
        "global": {
            "scrape_interval": f"{scrape_seconds:g}s",
            "evaluation_interval": f"{scrape_seconds:g}s",
        },
        "rule_files": [monitoring.RULES_FILE],
        "scrape_configs": [
            {
                "job_name": "model",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [f"{HOST}:{metrics_port}"]}],
            }
        ],
    }


def write_configuration(
    directory: Path, metrics_port: int, limits: MonitoringParams, scrape_seconds: float = 5
) -> Path:
    """prometheus.yml and the rules file in `directory`; the configuration's path."""
    import yaml

    directory.mkdir(parents=True, exist_ok=True)
    (directory / monitoring.RULES_FILE).write_text(monitoring.rules_yaml(limits))
    path = directory / CONFIG_FILE
    path.write_text(yaml.safe_dump(configuration(metrics_port, scrape_seconds), sort_keys=False))
    return path


def command(config: Path, data: Path, port: int) -> list[str]:
    """The Prometheus command line: loopback only, data under `data`."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise UserError(
            "prometheus is not installed: `make monitor` installs Debian's prometheus package"
        )
    return [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={data}",
        f"--web.listen-address={HOST}:{port}",
        "--web.enable-lifecycle",
    ]


def query_link(base: str, expr: str) -> str:
    """A link that opens the query in Prometheus' graph page."""
    return f"{base}/graph?g0.expr={urllib.parse.quote(expr)}&g0.tab=0&g0.range_input=15m"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the command's options."""
    parser.add_argument(
        "--metrics-port", type=int, default=6000, help="the model server's (default: 6000)"
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="Prometheus' own (default: %(default)s)"
    )
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="configuration and data")
    parser.add_argument("--params", type=Path, default=DEFAULT_PARAMS, help="params file")


def run(args: argparse.Namespace) -> int:
    """Entry point for `mlops monitor`: print what to look at, then run Prometheus."""
    limits = monitoring_params(load_params(args.params))
    config = write_configuration(args.dir, args.metrics_port, limits)
    argv = command(config.resolve(), (args.dir / "data").resolve(), args.port)
    base = f"http://{HOST}:{args.port}"
    lines = [
        f"Prometheus at {base} (alerts: {base}/alerts), scraping the model server's metrics at "
        f"{HOST}:{args.metrics_port} (start it with `make serve`). The dashboard's queries:",
    ]
    for panel in monitoring.PANELS:
        lines.append(f"  {panel.title}:")
        lines += [f"    {query_link(base, query)}" for query in panel.queries()]
    lines.append(
        "Grafana itself: `docker run --rm --network host grafana/grafana`, add "
        f"{base} as a Prometheus data source, import monitoring/dashboard.json."
    )
    print("\n".join(lines), flush=True)
    try:
        return subprocess.run(argv, check=False).returncode
    except KeyboardInterrupt:
        return 0
