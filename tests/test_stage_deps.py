"""dvc.yaml's code deps cannot drift: every project file a stage's command imports, directly or
not (lazy imports inside functions included), is among that stage's deps, and no file dep names
code the stage does not import. Otherwise a change to it would leave a stale output that
`dvc status` calls up to date."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PACKAGE = SRC / "mlops_template"
# The stage -> the module its `mlops` command runs (cli.py's COMMANDS table).
STAGE_MODULES = {
    "process": "mlops_template.stages.process",
    "train": "mlops_template.stages.train",
    "package": "mlops_template.stages.package",
}


def module_file(name: str) -> Path | None:
    """The file of a project module or package, or None if `name` is not one."""
    base = SRC.joinpath(*name.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def imported_files(path: Path) -> set[Path]:
    """Project files `path` imports anywhere in its body, with the packages on the way.

    The serving code imports its siblings by their bare names (it runs from the package
    directory): those resolve to files beside it.
    """
    found: set[Path] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "mlops_template":
                prefixes = (".".join(parts[: index + 1]) for index in range(len(parts)))
                found |= {file for file in map(module_file, prefixes) if file is not None}
            elif (path.parent / f"{parts[0]}.py").is_file() and path.parent.name == "serving":
                found.add(path.parent / f"{parts[0]}.py")
    return found


def import_closure(module: str) -> set[Path]:
    """Every project file the `mlops` command running `module` may import."""
    # The module and the packages that hold it (importing it runs their __init__ first).
    parts = module.split(".")
    start = {module_file(".".join(parts[: index + 1])) for index in range(len(parts))}
    start.add(PACKAGE / "cli.py")
    seen: set[Path] = set()
    pending = [file for file in start if file is not None]
    while pending:
        file = pending.pop()
        if file not in seen:
            seen.add(file)
            pending.extend(imported_files(file) - seen)
    return seen


def code_deps(stage: str) -> list[str]:
    """The deps of a dvc.yaml stage that are project code (under src/)."""
    deps = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][stage]["deps"]
    return [dep for dep in deps if dep.startswith("src/")]


def covered(file: str, deps: list[str]) -> bool:
    """Whether a dep names `file` or a folder holding it."""
    return any(file == dep or file.startswith(dep.rstrip("/") + "/") for dep in deps)


@pytest.mark.parametrize("stage", STAGE_MODULES)
def test_every_file_a_stage_imports_is_one_of_its_deps(stage: str) -> None:
    deps = code_deps(stage)
    imported = sorted(
        path.relative_to(REPO).as_posix() for path in import_closure(STAGE_MODULES[stage])
    )
    missing = [file for file in imported if not covered(file, deps)]
    assert not missing, f"dvc.yaml stage {stage!r} imports these but does not list them: {missing}"


@pytest.mark.parametrize("stage", STAGE_MODULES)
def test_no_file_dep_names_code_the_stage_does_not_import(stage: str) -> None:
    imported = {path.relative_to(REPO).as_posix() for path in import_closure(STAGE_MODULES[stage])}
    files = [dep for dep in code_deps(stage) if (REPO / dep).is_file()]
    stale = [dep for dep in files if dep not in imported]
    assert not stale, f"dvc.yaml stage {stage!r} lists code it does not import: {stale}"


def test_the_analysis_sees_lazy_imports() -> None:
    # The train stage imports evaluate and tracking inside functions only.
    closure = import_closure(STAGE_MODULES["train"])
    assert PACKAGE / "evaluate.py" in closure
    assert PACKAGE / "tracking.py" in closure
    assert PACKAGE / "deploy.py" not in closure
