"""The `mlops` command: one sub-command per module, imported only when it runs."""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys

from mlops_template.errors import UserError

# name -> (module, one-line help). Each module defines add_arguments(parser) and run(args) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "process": ("mlops_template.stages.process", "validate the raw CSV and split it"),
    "train": ("mlops_template.stages.train", "fit, evaluate, plot and log to MLflow"),
    "package": ("mlops_template.stages.package", "assemble the Seldon serving package"),
    "manifest": ("mlops_template.manifest", "render the SeldonDeployment for a serving image"),
    "deploy": ("mlops_template.deploy", "apply a SeldonDeployment, smoke-test it, roll back"),
    "report": ("mlops_template.report", "markdown report of params, metrics, plots vs a git ref"),
    "comment": ("mlops_template.pr_comment", "post or update the report comment (GitHub API)"),
    "data": ("mlops_template.remote", "pull or push DVC-tracked files with the default remote"),
    "stack": ("mlops_template.stack", "a local S3 endpoint and MLflow server on 127.0.0.1"),
    "register": ("mlops_template.registry", "register the pipeline's model version in MLflow"),
    "ui": ("mlops_template.ui", "MLflow's UI on the local store, on 127.0.0.1"),
    "monitoring": ("mlops_template.monitoring", "write the Grafana dashboard and the alert rules"),
    "monitor": ("mlops_template.prometheus", "run a local Prometheus scraping `make serve`"),
    "load-test": ("mlops_template.loadtest", "run the Locust scenario against a model server"),
    "audit": ("mlops_template.audit", "known-vulnerability gate: lock files (OSV), image (Grype)"),
}


class Terminated(BaseException):
    """SIGTERM arrived (a CI job cancelled, `timeout`, `kill`): unwind like Ctrl-C does."""


def _terminate(signum: int, frame: object) -> None:
    # Python's default would end the process on the spot; raising unwinds it instead, so every
    # half-written output is removed by the `finally` that staged it.
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    """Run one sub-command; user errors become one line on stderr and exit code 2."""
    argv = sys.argv[1:] if argv is None else argv
    # Only the chosen command's module is imported, so `mlops process` never pays for mlflow.
    chosen = next((arg for arg in argv if arg in COMMANDS), None)
    names = [chosen] if chosen else list(COMMANDS)
    parser = argparse.ArgumentParser(prog="mlops", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    modules = {}
    for name in COMMANDS:
        module_name, help_text = COMMANDS[name]
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if name in names:
            modules[name] = importlib.import_module(module_name)
            modules[name].add_arguments(sub)
    args = parser.parse_args(argv)
    # This project's messages at INFO; libraries' (boto, DVC, ...) only when they warn, or with -v.
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("mlops_template").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return modules[args.command].run(args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("terminated", file=sys.stderr)
        return 143


if __name__ == "__main__":
    sys.exit(main())
