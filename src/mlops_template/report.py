"""`mlops report`: the pull-request report of params, metrics, plots and model against a base ref.

DVC does the comparing: `Repo.params.diff`, `Repo.metrics.diff` and `Repo.plots.diff` (what
`dvc params diff`, `dvc metrics diff` and `dvc plots diff` run) read the base revision from git and
the head from the working tree. This module turns their answers into markdown (`render` is pure)
and copies both sides' plot images next to the report, where CML uploads them with the comment.

Only misuse fails (not a DVC/git repository, no metrics in the working tree); anything cosmetic (a
missing image, no model package, an unknown base ref) becomes a note in the report.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from mlops_template.errors import UserError
from mlops_template.evaluate import DECIMALS, higher_is_better
from mlops_template.plots import IMAGE_NAMES
from mlops_template.serving import contract

if TYPE_CHECKING:
    from dvc.repo import Repo

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path("report.md")
WORKSPACE = "workspace"  # DVC's name for the working tree in diff and show results
# A metric the pipeline does not define (one of another metrics file) whose name ends like this
# improves downwards; every other one upwards. The pipeline's own say it in HIGHER_IS_BETTER.
LOWER_IS_BETTER_SUFFIXES = ("loss", "error")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".svg")
IMAGE_TITLES = {"roc": "ROC", "precision_recall": "Precision-recall"}
MARKS = {"better": "✅ better", "worse": "❌ worse"}
MISSING = "—"
LISTED_FEATURES = 12  # a longer feature list is cut, the count stays exact


@dataclass(frozen=True)
class Change:
    """One param or metric: its value at the base and at the head (None where absent)."""

    name: str
    old: Any
    new: Any


@dataclass(frozen=True)
class ImagePair:
    """One plot image at both sides, as paths relative to the report (None where absent)."""

    source: str  # the path DVC knows the image by, e.g. plots/images/roc.png
    base: str | None
    head: str | None
    same: bool = False


@dataclass
class Comparison:
    """Everything the report says; `render` turns it into markdown."""

    base_ref: str
    base_commit: str | None  # None: git does not know base_ref here
    head_commit: str | None
    params: list[Change]
    metrics: list[Change]
    images: list[ImagePair]
    model_card: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    run_url: str | None = None


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of this metric is an improvement: as evaluate.HIGHER_IS_BETTER
    says for the pipeline's metrics, by a loss or error ending for those of other files."""
    known = higher_is_better(metric)
    if known is not None:
        return not known
    return metric.strip().lower().endswith(LOWER_IS_BETTER_SUFFIXES)


def is_number(value: Any) -> bool:
    """A finite int or float (bool excluded: True - False is not a metric change)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def delta(old: Any, new: Any) -> float | None:
    """new - old rounded to the metrics' precision, or None unless both are numbers."""
    if not (is_number(old) and is_number(new)):
        return None
    return round(new - old, DECIMALS) + 0.0  # + 0.0 turns -0.0 into 0.0


def verdict(metric: str, old: Any, new: Any) -> str:
    """'better', 'worse', 'no change', 'new', 'removed' or 'changed' (for non-numbers)."""
    if old is None and new is None:
        return "no change"
    if old is None:
        return "new"
    if new is None:
        return "removed"
    change = delta(old, new)
    if change is None:
        return "no change" if old == new else "changed"
    if change == 0:
        return "no change"
    improved = change < 0 if lower_is_better(metric) else change > 0
    return "better" if improved else "worse"


def format_value(value: Any) -> str:
    """A metric or param value for a table cell; numbers without float noise."""
    if value is None:
        return MISSING
    if is_number(value) and isinstance(value, float):
        text = f"{round(value, DECIMALS):.{DECIMALS}f}".rstrip("0").rstrip(".")
        return "0" if text in ("", "-0") else text
    if is_number(value):
        return str(value)
    return _code(str(value))


def _code(text: str) -> str:
    """Text as inline code that cannot break a table row."""
    text = text.replace("|", "\\|").replace("\n", " ")
    return f"`{text}`" if text else "`''`"


def format_param(value: Any) -> str:
    """A param value as written in params.yaml: numbers as they are, other values as code."""
    if value is None:
        return MISSING
    if is_number(value):
        return repr(value)
    return format_value(value)


def format_delta(old: Any, new: Any) -> str:
    """The signed change (+0.0123, -0.2, 0), or an em dash when there is nothing to subtract."""
    change = delta(old, new)
    if change is None:
        return MISSING
    if change == 0:
        return "0"
    sign = "+" if change > 0 else "-"
    return sign + format_value(abs(float(change)))


def flatten_diff(diff: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[Change]:
    """DVC's `{file: {key: {"old", "new"}}}` as changes, named `key` (or `file: key`), sorted."""
    several_files = len(diff) > 1
    changes = [
        Change(f"{path}: {key}" if several_files else key, values.get("old"), values.get("new"))
        for path, keys in diff.items()
        for key, values in keys.items()
    ]
    return sorted(changes, key=lambda change: change.name)


def workspace_values(shown: Mapping[str, Any]) -> list[Change]:
    """The head's values from a `metrics.show`/`params.show` result, as changes without a base."""
    files = shown.get(WORKSPACE, {}).get("data", {})
    nested = {
        path: {key: {"old": None, "new": value} for key, value in _flat(entry.get("data", {}))}
        for path, entry in files.items()
    }
    return flatten_diff(nested)


def _flat(data: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts as ('a.b', value) pairs, the way DVC names nested metrics."""
    pairs: list[tuple[str, Any]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            pairs.extend(_flat(value, f"{name}."))
        else:
            pairs.append((name, value))
    return pairs


def read_errors(result: Mapping[str, Any]) -> list[str]:
    """Notes for the files DVC could not read, from the `errors` part of a diff result."""
    notes = []
    for rev, errors in result.get("errors", {}).items():
        where = "in the working tree" if rev == WORKSPACE else f"at `{rev}`"
        if isinstance(errors, Mapping):
            # A missing file is not an error here: its values show as absent (first PR, removed).
            notes += [
                f"DVC cannot read `{path}` {where}: {error}"
                for path, error in errors.items()
                if not isinstance(error, FileNotFoundError)
            ]
        else:
            notes.append(f"DVC cannot read the files {where}: {errors}")
    return notes


def _show_errors(shown: Mapping[str, Any]) -> dict[str, Any]:
    """A `metrics.show` result's errors in the shape of a diff result's `errors`."""
    errors: dict[str, Any] = {}
    for rev, entry in shown.items():
        if entry.get("error"):
            errors[rev] = entry["error"]
        elif files := {p: d["error"] for p, d in entry.get("data", {}).items() if "error" in d}:
            errors[rev] = files
    return errors


def image_title(source: str) -> str:
    """'plots/images/precision_recall.png' -> 'Precision-recall'."""
    stem = PurePosixPath(source).stem
    return IMAGE_TITLES.get(stem, stem.replace("_", " ").capitalize())


def image_order(source: str) -> tuple[int, str]:
    """Sort key: the train stage's images in their documented order, then the rest by path."""
    name = PurePosixPath(source).name
    rank = IMAGE_NAMES.index(name) if name in IMAGE_NAMES else len(IMAGE_NAMES)
    return rank, source


def run_url(environ: Mapping[str, str]) -> str | None:
    """The GitHub Actions run's page, when the variables Actions sets are all present."""
    server = environ.get("GITHUB_SERVER_URL")
    repository = environ.get("GITHUB_REPOSITORY")
    run_id = environ.get("GITHUB_RUN_ID")
    if not (server and repository and run_id):
        return None
    return f"{server.rstrip('/')}/{repository}/actions/runs/{run_id}"


def default_base(environ: Mapping[str, str]) -> str:
    """The pull request's base branch as fetched by actions/checkout, else `main`."""
    base_branch = environ.get("GITHUB_BASE_REF")
    return f"origin/{base_branch}" if base_branch else "main"


def _short(commit: str | None) -> str:
    return commit[:7] if commit else "unknown"


def _image_cell(path: str | None, absent: str) -> str:
    return f"![]({quote(path)})" if path else absent


def _summary(comparison: Comparison) -> str:
    counts: dict[str, int] = {}
    for change in comparison.metrics:
        kind = verdict(change.name, change.old, change.new)
        counts[kind] = counts.get(kind, 0) + 1
    if comparison.base_commit is None or all(c.old is None for c in comparison.metrics):
        metric_part = f"{len(comparison.metrics)} metrics, nothing to compare them with"
    elif not any(kind != "no change" for kind in counts):
        metric_part = "no metric changed"
    else:
        order = ("better", "worse", "changed", "new", "removed", "no change")
        metric_part = ", ".join(f"{counts[kind]} {kind}" for kind in order if kind in counts)
    changed_params = len(comparison.params)
    if comparison.base_commit is None:
        param_part = "params not compared"
    elif changed_params == 0:
        param_part = "no param changed"
    else:
        param_part = f"{changed_params} param{'s' if changed_params > 1 else ''} changed"
    return f"**Metrics:** {metric_part}. **Params:** {param_part}."


def render(comparison: Comparison) -> str:
    """The report as GitHub-flavoured markdown."""
    base = f"`{comparison.base_ref}`"
    base_label = f"{base} (`{_short(comparison.base_commit)}`)" if comparison.base_commit else base
    lines = [
        "## Model report",
        "",
        f"Head: working tree at `{_short(comparison.head_commit)}`. Base: {base_label}.",
    ]
    if comparison.run_url:
        lines += ["", f"Workflow run: <{comparison.run_url}>"]
    lines += ["", _summary(comparison), ""]
    for note in comparison.notes:
        lines += [f"> {note}", ""]

    lines += ["### Params", ""]
    if comparison.base_commit is None:
        lines += ["Not compared: the base is unknown.", ""]
    elif not comparison.params:
        lines += ["No change: every param is the same as in the base.", ""]
    else:
        lines += ["| param | base | head |", "| --- | --- | --- |"]
        lines += [
            f"| {_code(c.name)} | {format_param(c.old)} | {format_param(c.new)} |"
            for c in comparison.params
        ]
        lines.append("")

    lines += [
        "### Metrics",
        "",
        "| metric | base | head | change | |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for c in comparison.metrics:
        kind = verdict(c.name, c.old, c.new)
        direction = " (lower is better)" if lower_is_better(c.name) else ""
        lines.append(
            f"| {_code(c.name)}{direction} | {format_value(c.old)} | {format_value(c.new)} "
            f"| {format_delta(c.old, c.new)} | {MARKS.get(kind, kind)} |"
        )
    lines.append("")

    lines += ["### Plots", ""]
    if not comparison.images:
        lines += ["No plot images in the base or the head.", ""]
    else:
        lines += [f"| | base {base} | head |", "| --- | --- | --- |"]
        for pair in comparison.images:
            title = image_title(pair.source) + (" (unchanged)" if pair.same else "")
            lines.append(
                f"| {title} | {_image_cell(pair.base, 'not in the base')} "
                f"| {_image_cell(pair.head, 'missing: run `dvc repro`')} |"
            )
        lines.append("")

    lines += ["### Model card", ""]
    if comparison.model_card:
        lines += ["| | |", "| --- | --- |"]
        lines += [f"| {name} | {value} |" for name, value in comparison.model_card]
    else:
        lines.append("No model package in the working tree.")
    lines.append("")
    return "\n".join(lines)


def human_size(size: int) -> str:
    """Bytes as B, KiB, MiB or GiB with one decimal."""
    value = float(size)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024:
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


RUNTIME_NAMES = {
    contract.ONNX: "ONNX Runtime (`model.onnx`, parity with scikit-learn checked at packaging)",
    contract.JOBLIB: "scikit-learn (`model.joblib`)",
}


def model_card(package: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """Rows for the model card from the serving package's metadata, and notes on problems."""
    from mlops_template.files import sha256

    try:
        metadata = contract.PackageMetadata.read(package)
    except contract.ContractError as error:
        return [], [f"No model card: {error}; run `dvc repro`."]
    notes: list[str] = []
    features = metadata.feature_names
    listed = ", ".join(f"`{name}`" for name in features[:LISTED_FEATURES])
    if len(features) > LISTED_FEATURES:
        listed += f", … ({len(features) - LISTED_FEATURES} more)"
    model_path = package / contract.MODEL_FILE
    if model_path.is_file():
        size = human_size(model_path.stat().st_size)
        if sha256(model_path) != metadata.model_sha256:
            notes.append(
                f"`{model_path}` does not match the sha256 in `{package / contract.METADATA_FILE}`."
            )
    else:
        size = MISSING
        notes.append(f"`{model_path}` is missing; run `dvc repro`.")
    rows = [
        ("Estimator", f"`{metadata.estimator}`"),
        ("Target", f"`{metadata.target}`"),
        ("Classes", ", ".join(f"`{name}`" for name in metadata.classes)),
        ("Training rows", str(metadata.training_rows)),
        (f"Features ({len(features)})", listed),
        ("Model size", size),
        ("sha256", f"`{metadata.model_sha256}`"),
        ("Served with", RUNTIME_NAMES.get(metadata.runtime, metadata.runtime)),
    ]
    return rows, notes


def _relative(path: Path, start: Path) -> str:
    """`path` relative to `start` with forward slashes, as markdown links want it."""
    return PurePosixPath(Path(os.path.relpath(path.resolve(), start.resolve()))).as_posix()


def _check_images_dir(images_dir: Path, out: Path) -> None:
    """Refuse to replace a directory this command did not write (e.g. `--images-dir plots`)."""
    if out.resolve().is_relative_to(images_dir.resolve()):
        raise UserError(f"--images-dir {images_dir} must not contain the report {out}")
    if images_dir.exists():
        if not images_dir.is_dir():
            raise UserError(f"--images-dir {images_dir} exists and is not a directory")
        foreign = sorted(p.name for p in images_dir.iterdir() if p.name not in ("base", "head"))
        if foreign:
            raise UserError(
                f"--images-dir {images_dir} holds files the report did not write "
                f"({', '.join(foreign[:3])}): choose another directory"
            )


def image_sources(shown: Mapping[str, Any], rev: str) -> dict[str, bytes]:
    """{path: bytes} of the image plots in a `Repo.plots.show` result for one revision."""
    sources = shown.get(rev, {}).get("sources", {}).get("data", {})
    images = {}
    for path, entry in sources.items():
        data = entry.get("data") if isinstance(entry, Mapping) else None
        if path.lower().endswith(IMAGE_SUFFIXES) and isinstance(data, bytes):
            images[path] = data
    return images


def write_images(
    shown: Mapping[str, Any], base_rev: str | None, images_dir: Path, report_dir: Path
) -> list[ImagePair]:
    """Copy both sides' images under images_dir/{base,head}/ and pair them up."""
    from mlops_template.files import atomic_directory

    sides = {"base": image_sources(shown, base_rev) if base_rev else {}}
    sides["head"] = image_sources(shown, WORKSPACE)
    final: dict[str, dict[str, str]] = {"base": {}, "head": {}}
    with atomic_directory(images_dir) as temporary:
        for side, images in sides.items():
            for source, data in images.items():
                relative = PurePosixPath(source)
                if relative.is_absolute() or ".." in relative.parts:
                    continue  # only paths inside the repository become files here
                target = temporary / side / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
                final[side][source] = _relative(images_dir / side / relative, report_dir)
    pairs = [
        ImagePair(
            source,
            final["base"].get(source),
            final["head"].get(source),
            same=source in sides["base"] and sides["base"][source] == sides["head"].get(source),
        )
        for source in sorted(set(final["base"]) | set(final["head"]), key=image_order)
    ]
    return pairs


def _open_repo() -> Repo:
    """The DVC repository around the current directory; UserError unless it is also a git one."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        repo = Repo()
    except NotDvcRepoError as error:
        raise UserError(
            "not inside a DVC repository (no .dvc directory here or above): "
            "run the report from the project"
        ) from error
    from scmrepo.git import Git

    if not isinstance(repo.scm, Git):
        repo.close()
        raise UserError(
            f"{repo.root_dir} is not a git repository: the report compares git revisions"
        )
    return repo


def _resolve(repo: Repo, rev: str) -> str | None:
    """The commit `rev` names, or None when git does not know it here."""
    from scmrepo.exceptions import SCMError

    try:
        return repo.scm.resolve_rev(rev)
    except SCMError:
        return None


def compare(base: str, images_dir: Path, report_dir: Path, package: Path) -> Comparison:
    """Ask DVC for the params, metrics and plots of `base` and the working tree."""
    notes: list[str] = []
    with _open_repo() as repo:
        head_commit = _resolve(repo, "HEAD")
        base_commit = _resolve(repo, base)
        shown_metrics = repo.metrics.show(revs=[WORKSPACE])
        unreadable = read_errors({"errors": _show_errors(shown_metrics)})
        if unreadable:
            raise UserError(f"{unreadable[0]}; run `dvc repro`")
        head_metrics = workspace_values(shown_metrics)
        if not head_metrics:
            raise UserError("no metrics in the working tree: run `dvc repro` first")
        if base_commit is None:
            notes.append(
                f"The base `{base}` is not known to git here, so there is nothing to compare "
                "with. In GitHub Actions check out with `fetch-depth: 0`; locally `git fetch` it."
            )
            params, metrics = [], head_metrics
        else:
            params_diff = repo.params.diff(a_rev=base)
            metrics_diff = repo.metrics.diff(a_rev=base, all=True)
            # An unreadable file at the base is the base's problem: say so, compare the rest.
            notes += read_errors(params_diff) + read_errors(metrics_diff)
            params = flatten_diff(params_diff.get("diff", {}))
            metrics = flatten_diff(metrics_diff.get("diff", {}))
            if all(change.old is None for change in metrics):
                notes.append(
                    f"The base `{base}` has no metrics yet (a first pull request?): "
                    "this report shows the head's numbers only."
                )
        stale = repo.status()
        if stale:
            notes.append(
                "The pipeline is not up to date with its inputs (`dvc status`: "
                f"{', '.join(sorted(stale))}): run `dvc repro`, the head's numbers may be stale."
            )
        if base_commit is None:
            shown = repo.plots.show(revs=[WORKSPACE])
        else:  # `dvc plots diff BASE`: the base's plots and the working tree's
            shown = repo.plots.diff(revs=[base])
        images = write_images(shown, base if base_commit else None, images_dir, report_dir)
    for pair in images:
        if pair.head is None:
            notes.append(f"`{pair.source}` is in the base but not in the working tree.")
    card, card_notes = model_card(package)
    return Comparison(
        base_ref=base,
        base_commit=base_commit,
        head_commit=head_commit,
        params=params,
        metrics=metrics,
        images=images,
        model_card=card,
        notes=notes + card_notes,
        run_url=run_url(os.environ),
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the command's options."""
    parser.add_argument(
        "--base",
        default=default_base(os.environ),
        metavar="REF",
        help="git ref to compare with (default: origin/$GITHUB_BASE_REF in Actions, else main)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        metavar="FILE",
        help=f"the markdown to write (default: {DEFAULT_OUT})",
    )
    parser.add_argument(
        "--images-dir",
        type=Path,
        metavar="DIR",
        help="where base/ and head/ plot images go (default: --out without suffix, e.g. report/)",
    )
    parser.add_argument(
        "--package",
        type=Path,
        default=contract.DEFAULT_DIR,
        metavar="DIR",
        help=f"the serving package the model card is read from (default: {contract.DEFAULT_DIR})",
    )


def run(args: argparse.Namespace) -> int:
    """Entry point for `mlops report`."""
    from mlops_template.files import write_text

    out: Path = args.out
    if out.is_dir():
        raise UserError(f"--out {out} is a directory: name the markdown file to write")
    images_dir: Path = args.images_dir or out.with_suffix("")
    _check_images_dir(images_dir, out)
    report_dir = out.parent if str(out.parent) else Path(".")
    comparison = compare(args.base, images_dir, report_dir, args.package)
    write_text(out, render(comparison))
    logger.info("wrote %s (images in %s) against %s", out, images_dir, args.base)
    return 0
