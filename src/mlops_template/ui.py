"""`mlops ui`: MLflow's UI on the local store, on 127.0.0.1, on a port that is checked first.

`mlflow ui` itself exits 0 after "Address already in use", which a Makefile cannot tell from a
clean stop; the port is checked here and a taken one named in one line.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mlops_template.processes import HOST, port_from

# Not 5000, MLflow's default: that is the model server's gRPC port (`make serve`).
PORT_VARIABLE = "MLFLOW_UI_PORT"
DEFAULT_PORT = 5001
STORE = "sqlite:///mlflow.db"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the command's options."""
    parser.add_argument(
        "--backend-store-uri", default=STORE, help="the MLflow store (default: %(default)s)"
    )


def run(args: argparse.Namespace) -> int:
    """Check the port, then become `mlflow ui` (Ctrl-C stops it)."""
    port = port_from(PORT_VARIABLE, DEFAULT_PORT)
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    print(f"MLflow UI on http://{HOST}:{port} (Ctrl-C stops it)", file=sys.stderr)
    command = [mlflow, "ui", "--backend-store-uri", args.backend_store_uri]
    os.execv(mlflow, [*command, "--host", HOST, "--port", str(port)])
