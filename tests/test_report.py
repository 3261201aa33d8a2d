"""`mlops report`: formatting on tiny inline data, and the real command on a real git repository.

The end-to-end tests share one temporary repository built the way a project grows: a commit with
code and params but no pipeline run yet, a `main` commit with a full `dvc repro`, then a branch that
changes a hyperparameter and reruns. The report is run against each base a user meets.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mlops_template import report
from mlops_template.report import Change, Comparison, ImagePair

from .conftest import REPO

MLOPS = str(Path(sys.executable).with_name("mlops"))
# What a project needs for `dvc repro`; src/ is there because dvc.yaml lists it as dependencies
# (the code that runs is the installed package).
PROJECT_FILES = (
    "dvc.yaml",
    "params.yaml",
    "data/raw",
    "src/mlops_template",
    "requirements/serve.lock",
    ".dvc/config",
    ".dvc/.gitignore",
    ".dvcignore",
    ".gitignore",
)
PARAM = "train.random_forest.max_depth"
IMAGE_CELL = re.compile(r"^!\[\]\((?P<path>[^)]+)\)$")
GITHUB_VARIABLES = ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_RUN_ID", "GITHUB_BASE_REF")


# Pure formatting on inline data.


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (0.5, 0.75, "+0.25"),
        (0.988372, 0.790698, "-0.197674"),
        (0.1, 0.1, "0"),
        (0.3, 0.1 + 0.2, "0"),  # float noise below the metrics' 6 decimals is no change
        (2, 5, "+3"),
        (None, 0.5, "—"),
        (0.5, None, "—"),
        ("a", "b", "—"),
    ],
)
def test_delta_is_signed_and_rounded(old, new, expected):
    assert report.format_delta(old, new) == expected


@pytest.mark.parametrize(
    ("metric", "old", "new", "expected"),
    [
        ("accuracy", 0.8, 0.9, "better"),
        ("accuracy", 0.9, 0.8, "worse"),
        ("log_loss", 0.5, 0.2, "better"),
        ("log_loss", 0.2, 0.5, "worse"),
        ("val.mean_absolute_error", 3.0, 2.0, "better"),
        ("scores.json: log_loss", 0.2, 0.3, "worse"),
        ("roc_auc", 0.9, 0.9, "no change"),
        ("roc_auc", None, 0.9, "new"),
        ("roc_auc", 0.9, None, "removed"),
        ("model", "rf", "lr", "changed"),
        ("model", "rf", "rf", "no change"),
    ],
)
def test_verdict_knows_the_direction_of_each_metric(metric, old, new, expected):
    assert report.verdict(metric, old, new) == expected


def test_the_pipeline_s_metrics_are_judged_by_their_definition_not_their_name(monkeypatch):
    # A metric added beside the others in evaluate.py, lower-is-better without a loss ending.
    from mlops_template import evaluate

    monkeypatch.setitem(evaluate.HIGHER_IS_BETTER, "brier_score", False)
    assert report.verdict("brier_score", 0.2, 0.1) == "better"
    assert report.verdict("metrics.json: brier_score", 0.1, 0.2) == "worse"


def test_values_are_shown_without_float_noise():
    assert report.format_value(0.1 + 0.2) == "0.3"
    assert report.format_value(1e-9) == "0"
    assert report.format_value(None) == "—"
    assert report.format_value("a|b") == "`a\\|b`"
    assert report.format_param(1.0) == "1.0"
    assert report.format_param(3) == "3"
    assert report.format_param("random_forest") == "`random_forest`"


def test_dvc_diff_is_flattened_and_sorted_with_file_names_only_when_several():
    one_file = {"metrics.json": {"b": {"old": 1, "new": 2}, "a": {"old": None, "new": 3}}}
    assert report.flatten_diff(one_file) == [Change("a", None, 3), Change("b", 1, 2)]
    two_files = {"m.json": {"x": {"old": 1, "new": 1}}, "n.json": {"x": {"old": 2}}}
    assert report.flatten_diff(two_files) == [
        Change("m.json: x", 1, 1),
        Change("n.json: x", 2, None),
    ]


def test_workspace_values_flatten_nested_metrics_like_dvc():
    shown = {"workspace": {"data": {"metrics.json": {"data": {"a": 1, "val": {"loss": 0.5}}}}}}
    assert report.workspace_values(shown) == [
        Change("a", None, 1),
        Change("val.loss", None, 0.5),
    ]


def test_run_link_only_with_all_github_variables():
    environ = {
        "GITHUB_SERVER_URL": "https://github.com",
        "GITHUB_REPOSITORY": "me/project",
        "GITHUB_RUN_ID": "42",
    }
    assert report.run_url(environ) == "https://github.com/me/project/actions/runs/42"
    assert report.run_url({**environ, "GITHUB_RUN_ID": ""}) is None
    assert report.default_base({"GITHUB_BASE_REF": "develop"}) == "origin/develop"
    assert report.default_base({}) == "main"


def comparison(**overrides) -> Comparison:
    """A small comparison; keyword arguments replace fields."""
    fields = {
        "base_ref": "main",
        "base_commit": "a" * 40,
        "head_commit": "b" * 40,
        "params": [],
        "metrics": [Change("accuracy", 0.9, 0.9)],
        "images": [],
    }
    return Comparison(**{**fields, **overrides})


def test_added_and_removed_metrics_are_rows_with_their_one_side():
    markdown = report.render(
        comparison(metrics=[Change("brier_score_loss", None, 0.1), Change("roc_auc", 0.9, None)])
    )
    assert "| `brier_score_loss` (lower is better) | — | 0.1 | — | new |" in markdown
    assert "| `roc_auc` | 0.9 | — | — | removed |" in markdown
    assert "**Metrics:** 1 new, 1 removed." in markdown


def test_a_missing_head_image_is_a_cell_note_not_a_failure():
    markdown = report.render(
        comparison(images=[ImagePair("plots/images/roc.png", "r/base/roc.png", None)])
    )
    assert "| ROC | ![](r/base/roc.png) | missing: run `dvc repro` |" in markdown


def test_unreadable_files_become_notes():
    errors = {
        "main": {"metrics.json": ValueError("bad JSON"), "old.json": FileNotFoundError("old.json")},
        "workspace": OSError("gone"),
    }
    assert report.read_errors({"errors": errors, "diff": {}}) == [
        "DVC cannot read `metrics.json` at `main`: bad JSON",
        "DVC cannot read the files in the working tree: gone",
    ]


# The real command on a real repository.


def sh(*args: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run a command with the project's environment first on PATH; fail with its output."""
    result = subprocess.run(
        args, cwd=cwd, env=env or clean_env(), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def clean_env(**extra: str) -> dict[str, str]:
    """No GitHub variables or MLflow server from the outside; git identity for commits."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for name in ("MLFLOW_TRACKING_URI", *GITHUB_VARIABLES):
        env.pop(name, None)
    for role in ("AUTHOR", "COMMITTER"):
        env[f"GIT_{role}_NAME"] = "test"
        env[f"GIT_{role}_EMAIL"] = "test@example.com"
    return {**env, **extra}


def mlops_report(repo: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """`mlops report` as CI runs it."""
    return subprocess.run(
        [MLOPS, "report", *args],
        cwd=repo,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def section_rows(markdown: str, heading: str) -> list[list[str]]:
    """The cells of the table under `### heading`, header and separator rows left out."""
    section = markdown.split(f"### {heading}\n", 1)[1].split("\n### ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split(" | ")] for row in rows[2:]]


def metric_rows(markdown: str) -> dict[str, list[str]]:
    """{metric name: [base, head, change, mark]} from the Metrics table."""
    return {row[0].split("`")[1]: row[1:] for row in section_rows(markdown, "Metrics")}


def set_param(params: Path, old: str, new: str) -> None:
    """Change `max_depth: old` to `new` inside the random_forest block only."""
    text = params.read_text()
    block = re.search(r"\n  random_forest:\n(    .*\n)+", text)
    assert block, "params.yaml has no train.random_forest block"
    assert f"max_depth: {old}\n" in block.group(0), "params.yaml changed shape"
    changed = block.group(0).replace(f"max_depth: {old}\n", f"max_depth: {new}\n")
    params.write_text(text.replace(block.group(0), changed))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> dict:
    """A repository with three states: no pipeline run, `main` with one, a branch changing a param.

    Every report is written here, in the order the states arise, so the tests only read results.
    """
    repo = tmp_path_factory.mktemp("report") / "project"
    for name in PROJECT_FILES:
        source, target = REPO / name, repo / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
    sh("git", "init", "--quiet", "--initial-branch", "main", cwd=repo)
    sh("git", "add", ".", cwd=repo)
    sh("git", "commit", "--quiet", "-m", "code and params, no pipeline run yet", cwd=repo)
    sh("git", "tag", "no-metrics", cwd=repo)
    sh("dvc", "repro", "--quiet", cwd=repo)
    sh("git", "add", ".", cwd=repo)
    sh("git", "commit", "--quiet", "-m", "pipeline run", cwd=repo)
    base_metrics = json.loads((repo / "metrics.json").read_text())

    results = {"repo": repo, "base_metrics": base_metrics}
    results["no_change"] = mlops_report(repo, "--base", "main", "--out", "reports/same.md")

    sh("git", "checkout", "--quiet", "-b", "shallower", cwd=repo)
    set_param(repo / "params.yaml", "3", "1")
    sh("dvc", "repro", "--quiet", cwd=repo)
    sh("git", "commit", "--quiet", "-am", "max_depth 3 -> 1", cwd=repo)
    results["head_metrics"] = json.loads((repo / "metrics.json").read_text())
    # What actions/checkout with fetch-depth: 0 leaves: the base branch as a remote ref.
    sh("git", "update-ref", "refs/remotes/origin/main", "main", cwd=repo)
    results["changed"] = mlops_report(
        repo,
        "--out",
        "reports/changed.md",
        GITHUB_BASE_REF="main",
        GITHUB_SERVER_URL="https://github.com",
        GITHUB_REPOSITORY="me/project",
        GITHUB_RUN_ID="7",
    )
    results["first_pr"] = mlops_report(repo, "--base", "no-metrics", "--out", "reports/first.md")
    results["unknown"] = mlops_report(repo, "--base", "origin/gone", "--out", "reports/gone.md")
    (repo / "plots/images/roc.png").unlink()
    results["image_missing"] = mlops_report(repo, "--out", "reports/lost.md")
    return results


def read_report(project: dict, case: str, name: str) -> str:
    """The markdown one case wrote, after checking it exited 0 and said nothing on stderr."""
    result = project[case]
    assert result.returncode == 0, result.stderr
    return (project["repo"] / "reports" / name).read_text()


@pytest.mark.slow
def test_changed_param_shows_old_and_new(project):
    markdown = read_report(project, "changed", "changed.md")
    assert section_rows(markdown, "Params") == [[f"`{PARAM}`", "3", "1"]]
    assert "Base: `origin/main` (" in markdown
    assert "**Params:** 1 param changed." in markdown


@pytest.mark.slow
def test_metrics_show_both_sides_and_signed_changes(project):
    base, head = project["base_metrics"], project["head_metrics"]
    assert base != head, "the param change should move the metrics"
    rows = metric_rows(read_report(project, "changed", "changed.md"))
    assert set(rows) == set(head)
    for name, (old_cell, new_cell, change_cell, mark) in rows.items():
        assert float(old_cell) == base[name], name
        assert float(new_cell) == head[name], name
        expected_change = round(head[name] - base[name], 6)
        assert float(change_cell) == pytest.approx(expected_change, abs=1e-9), name
        if expected_change:
            assert change_cell[0] == ("+" if expected_change > 0 else "-"), name
            improved = expected_change < 0 if name == "log_loss" else expected_change > 0
            assert mark == ("✅ better" if improved else "❌ worse"), name
        else:
            assert (change_cell, mark) == ("0", "no change"), name


@pytest.mark.slow
def test_plot_images_of_both_sides_exist_beside_the_report(project):
    repo = project["repo"]
    rows = section_rows(read_report(project, "changed", "changed.md"), "Plots")
    assert [row[0] for row in rows] == [
        "Confusion matrix",
        "ROC",
        "Precision-recall",
        "Feature importance",
    ]
    for row, name in zip(rows, report.IMAGE_NAMES, strict=True):
        base_path, head_path = (IMAGE_CELL.match(cell).group("path") for cell in row[1:])
        # Relative to the report, as CML resolves them; the bytes are each side's own image.
        base_image = (repo / "reports" / base_path).read_bytes()
        assert base_image == sh_bytes(repo, "git", "show", f"main:plots/images/{name}")
        head_image = (repo / "reports" / head_path).read_bytes()
        assert head_image == sh_bytes(repo, "git", "show", f"shallower:plots/images/{name}")
        assert base_image != head_image


def sh_bytes(repo: Path, *args: str) -> bytes:
    """A command's raw stdout."""
    return subprocess.run(args, cwd=repo, capture_output=True, check=True, timeout=60).stdout


@pytest.mark.slow
def test_model_card_and_run_link(project):
    markdown = read_report(project, "changed", "changed.md")
    metadata = json.loads((project["repo"] / "models/serving/metadata.json").read_text())
    card = dict(section_rows(markdown, "Model card"))
    assert card["Estimator"] == f"`{metadata['estimator']}`"
    assert card["Training rows"] == str(metadata["training_rows"])
    assert card["sha256"] == f"`{metadata['model_sha256']}`"
    assert card[f"Features ({len(metadata['features'])})"].count("`") == 2 * len(
        metadata["features"]
    )
    assert card["Model size"].endswith("KiB")
    assert card["Served with"].startswith("ONNX Runtime") == (metadata["runtime"] == "onnx")
    assert "Workflow run: <https://github.com/me/project/actions/runs/7>" in markdown


@pytest.mark.slow
def test_no_change_says_so(project):
    markdown = read_report(project, "no_change", "same.md")
    assert "No change: every param is the same as in the base." in markdown
    assert "**Metrics:** no metric changed." in markdown
    rows = metric_rows(markdown)
    assert set(rows) == set(project["base_metrics"])
    assert {tuple(cells[2:]) for cells in rows.values()} == {("0", "no change")}
    titles = [row[0] for row in section_rows(markdown, "Plots")]
    assert len(titles) == len(report.IMAGE_NAMES)
    assert all(title.endswith("(unchanged)") for title in titles)
    assert "> " not in markdown, "no notes expected when nothing changed"
    assert "Workflow run" not in markdown, "no link outside GitHub Actions"


@pytest.mark.slow
def test_first_pull_request_base_without_metrics(project):
    markdown = read_report(project, "first_pr", "first.md")
    assert "The base `no-metrics` has no metrics yet" in markdown
    assert "DVC cannot read" not in markdown, "a file missing at the base is not an error"
    rows = metric_rows(markdown)
    assert {name: float(cells[1]) for name, cells in rows.items()} == project["head_metrics"]
    assert {(cells[0], cells[3]) for cells in rows.values()} == {("—", "new")}
    for row in section_rows(markdown, "Plots"):
        assert row[1] == "not in the base"
        assert IMAGE_CELL.match(row[2])


@pytest.mark.slow
def test_unknown_base_is_a_note_not_a_failure(project):
    markdown = read_report(project, "unknown", "gone.md")
    assert "The base `origin/gone` is not known to git here" in markdown
    assert set(metric_rows(markdown)) == set(project["head_metrics"])


@pytest.mark.slow
def test_missing_image_is_a_note_and_exit_0(project):
    markdown = read_report(project, "image_missing", "lost.md")
    assert "`plots/images/roc.png` is in the base but not in the working tree." in markdown
    roc = next(row for row in section_rows(markdown, "Plots") if row[0] == "ROC")
    assert roc[2] == "missing: run `dvc repro`"


def test_outside_a_repository_is_one_line_and_exit_2(tmp_path):
    result = mlops_report(tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        "error: not inside a DVC repository (no .dvc directory here or above): "
        "run the report from the project\n"
    )
    assert not (tmp_path / "report.md").exists()


def test_dvc_without_git_is_one_line_and_exit_2(tmp_path):
    sh("dvc", "init", "--quiet", "--no-scm", cwd=tmp_path)
    result = mlops_report(tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        f"error: {tmp_path} is not a git repository: the report compares git revisions\n"
    )


def test_no_metrics_in_working_tree_says_run_dvc_repro(tmp_path):
    sh("git", "init", "--quiet", cwd=tmp_path)
    sh("dvc", "init", "--quiet", cwd=tmp_path)
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  train:\n    cmd: 'true'\n    metrics:\n      - metrics.json:\n"
        "          cache: false\n"
    )
    result = mlops_report(tmp_path, "--base", "HEAD")
    assert result.returncode == 2
    assert result.stderr == "error: no metrics in the working tree: run `dvc repro` first\n"
    assert not (tmp_path / "report.md").exists()


def test_refuses_to_replace_a_directory_it_did_not_write(tmp_path):
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "keep.csv").write_text("x\n")
    result = mlops_report(tmp_path, "--images-dir", "plots")
    assert result.returncode == 2
    assert "holds files the report did not write (keep.csv)" in result.stderr
    assert (tmp_path / "plots" / "keep.csv").exists()
