"""The GitHub workflows: linters report nothing, and the properties a user relies on hold.

GitHub itself cannot run here, so these tests read the workflow files: every action pinned to a
commit, least-privilege permissions, time limits, no `pull_request_target`, no secrets for forks,
and every `run:` step a Make target that exists (so CI does what `make` does on a laptop).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"
BIN = Path(sys.executable).parent
NAMES = ("ci", "audit", "pr-report", "pr-comment", "build-push", "deploy")
# `owner/repo[/path]@<40 hex> # vX.Y.Z`: immutable, with the human-readable version beside it.
PINNED = re.compile(r"uses: [\w.-]+/[\w./-]+@[0-9a-f]{40} # v\d+\.\d+\.\d+$")
LOCAL = re.compile(r"uses: \$/\.github/workflows/[\w-]+\.yml$")
# `run:` steps that are not Make targets, each for a reason a test below or the docs explain.
OTHER_RUN_STEPS = {
    'cat report.md >> "$GITHUB_STEP_SUMMARY"',
    'scripts/pr-comment.sh "$REPORT_DIR"',
    'scripts/smoke-test-image.sh "$IMAGE"',
    'scripts/image-summary.sh "$IMAGE" "$DIGEST" >> "$GITHUB_STEP_SUMMARY"',
    'docker pull "$IMAGE"',
    'scripts/image-package.sh "$IMAGE" build/package',
    'scripts/verify-image.sh "$IMAGE" "$GITHUB_REPOSITORY" >> "$GITHUB_OUTPUT"',
    'echo "name=${IMAGE%:*}" >> "$GITHUB_OUTPUT"',
    'cosign sign --yes -a "model-sha256=$MODEL_SHA256" -a "git-commit=$GITHUB_SHA" '
    '"$IMAGE_NAME@$DIGEST"',
    '.venv/bin/mlops manifest --image "$IMAGE" --package "$PACKAGE" --git-commit "$GIT_COMMIT" '
    '--namespace "$NAMESPACE" --replicas "$REPLICAS" --max-replicas "$MAX_REPLICAS" '
    '"$MONITORING" --out build/seldon-deployment.yaml',
}
SAME_REPOSITORY = "github.event.pull_request.head.repo.full_name == github.repository"


def tool(name: str) -> str:
    """Path of a linter installed in this environment by `make setup`."""
    path = BIN / name
    assert path.exists(), f"{name} missing from {BIN}: run `make setup`"
    return str(path)


def run(*command: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """Run a linter and return it finished."""
    return subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def load(name: str) -> dict[str, Any]:
    """One workflow as data; YAML 1.1 reads the `on:` key as True, so put it back."""
    data = yaml.safe_load((WORKFLOWS / f"{name}.yml").read_text())
    data["on"] = data.pop(True)
    return data


def workflow_steps(name: str) -> list[tuple[str, dict[str, Any]]]:
    """(job id, step) for every step in a workflow."""
    return [
        (job_id, step)
        for job_id, job in load(name)["jobs"].items()
        for step in job.get("steps", [])
    ]


def test_the_workflows_exist_and_nothing_else() -> None:
    assert sorted(path.stem for path in WORKFLOWS.glob("*.y*ml")) == sorted(NAMES)


# --- linters -------------------------------------------------------------------------------


def test_actionlint_with_shellcheck_finds_nothing() -> None:
    done = run(tool("actionlint"), "-shellcheck", tool("shellcheck"), "-no-color")
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == ""


def test_actionlint_really_runs_shellcheck(tmp_path: Path) -> None:
    # Without this, a missing shellcheck would make the test above pass silently.
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    steps:\n      - run: echo $HOME\n"
    )
    done = run(tool("actionlint"), "-shellcheck", tool("shellcheck"), "-no-color", str(bad))
    assert done.returncode == 1
    assert "SC2086" in done.stdout


def test_zizmor_offline_finds_nothing() -> None:
    done = run(tool("zizmor"), "--offline", "--no-progress", str(WORKFLOWS.parent))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "No findings to report" in done.stdout


def test_zizmor_flags_an_unsafe_workflow(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: pull_request_target\npermissions: {}\njobs:\n  a:\n    runs-on: ubuntu-24.04\n"
        "    permissions: {}\n    steps:\n      - uses: actions/checkout@v5\n"
        "        with:\n          ref: ${{ github.event.pull_request.head.sha }}\n"
    )
    done = run(tool("zizmor"), "--offline", "--no-progress", str(bad))
    assert done.returncode != 0
    assert "dangerous-triggers" in done.stdout


def test_shell_scripts_pass_shellcheck() -> None:
    scripts = sorted(str(path) for path in (ROOT / "scripts").glob("*.sh"))
    assert scripts
    done = run(tool("shellcheck"), *scripts)
    assert done.returncode == 0, done.stdout


def test_dockerfile_passes_hadolint() -> None:
    dockerfile = ROOT / "Dockerfile"
    assert dockerfile.exists(), "the image is built from ./Dockerfile"
    done = run(tool("hadolint"), str(dockerfile))
    assert done.returncode == 0, done.stdout + done.stderr


# --- properties a user relies on -----------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_every_action_is_pinned_to_a_commit_with_its_version(name: str) -> None:
    lines = [
        line.strip().removeprefix("- ")
        for line in (WORKFLOWS / f"{name}.yml").read_text().splitlines()
        if re.match(r"\s*(- )?uses:", line)
    ]
    assert lines
    for line in lines:
        assert PINNED.match(line) or LOCAL.match(line), line


@pytest.mark.parametrize("name", NAMES)
def test_permissions_are_empty_at_the_top_and_explicit_per_job(name: str) -> None:
    workflow = load(name)
    assert workflow["permissions"] == {}
    for job_id, job in workflow["jobs"].items():
        assert "permissions" in job, f"{name}.{job_id} has no permissions"
        assert "write-all" not in str(job["permissions"])


def test_write_permissions_only_where_needed() -> None:
    writes = {
        (name, job_id, scope)
        for name in NAMES
        for job_id, job in load(name)["jobs"].items()
        for scope, level in job["permissions"].items()
        if level == "write"
    }
    assert writes == {
        ("pr-comment", "comment", "pull-requests"),  # the report comment (never runs PR code)
        ("build-push", "image", "packages"),  # push to GHCR
        ("build-push", "image", "attestations"),  # SBOM and provenance attestations
        ("deploy", "build", "attestations"),  # handed to build-push
        ("deploy", "build", "packages"),  # handed to build-push when deploy builds first
        # OIDC tokens for short-lived cloud credentials, where the DVC remote is used
        ("pr-report", "report", "id-token"),
        ("build-push", "image", "id-token"),
        ("deploy", "build", "id-token"),
    }


@pytest.mark.parametrize("name", ["build-push", "pr-report"])
def test_cloud_credentials_come_from_oidc_with_static_keys_as_the_fallback(name: str) -> None:
    steps = [step for _, step in workflow_steps(name)]
    oidc = [i for i, s in enumerate(steps) if "configure-aws-credentials" in s.get("uses", "")]
    assert len(oidc) == 1
    assert "vars.AWS_ROLE_ARN != ''" in steps[oidc[0]]["if"]
    assert steps[oidc[0]]["with"]["role-to-assume"] == "${{ vars.AWS_ROLE_ARN }}"
    remote = [s for s in steps if s.get("run") in ("make pull", "make push-data")]
    assert remote
    for step in remote:
        assert steps.index(step) > oidc[0]
        assert step["env"]["AWS_ACCESS_KEY_ID"] == (
            "${{ env.AWS_ACCESS_KEY_ID || secrets.AWS_ACCESS_KEY_ID }}"
        )


def test_main_builds_push_data_then_register_the_model_as_candidate() -> None:
    job = load("build-push")["jobs"]["image"]
    assert job["env"]["MLFLOW_TRACKING_URI"] == "${{ vars.MLFLOW_TRACKING_URI }}"
    runs = [step.get("run") for step in job["steps"]]
    register = job["steps"][runs.index("make register")]
    assert runs.index("make push-data") < runs.index("make register")
    assert register["env"]["SKIP_WITHOUT_SERVER"] == "true"
    assert register["env"]["ALIAS"] == "${{ github.ref == 'refs/heads/main' && 'candidate' || '' }}"


@pytest.mark.parametrize("name", NAMES)
def test_every_job_has_a_time_limit(name: str) -> None:
    for job_id, job in load(name)["jobs"].items():
        if "uses" in job:  # a reusable-workflow call: the called jobs carry their own limits
            assert job["uses"].startswith("$/")
            continue
        assert 0 < job["timeout-minutes"] <= 60, f"{name}.{job_id}"


@pytest.mark.parametrize("name", NAMES)
def test_no_pull_request_target_anywhere(name: str) -> None:
    assert "pull_request_target" not in (WORKFLOWS / f"{name}.yml").read_text()


@pytest.mark.parametrize("name", NAMES)
def test_concurrency_groups_cancel_superseded_pull_request_runs(name: str) -> None:
    workflow = load(name)
    concurrency = workflow["concurrency"]
    assert concurrency["group"]
    if "pull_request" in workflow["on"]:
        assert concurrency["cancel-in-progress"] in (
            True,
            "${{ github.event_name == 'pull_request' }}",
        )
    else:  # a push to main or a deploy is never cancelled half-way
        assert concurrency["cancel-in-progress"] is False


def test_pull_request_secrets_are_skipped_for_forks() -> None:
    for job_id, step in workflow_steps("pr-report"):
        if "secrets." in str(step.get("env", {})):
            assert step.get("if") == SAME_REPOSITORY, (job_id, step.get("name"))


def test_the_workflow_that_runs_pull_request_code_cannot_write_or_comment() -> None:
    job = load("pr-report")["jobs"]["report"]
    assert job["permissions"] == {"contents": "read", "id-token": "write"}
    assert not any("cml" in step.get("run", "") for step in job["steps"])


def test_pull_request_report_has_history_and_is_handed_over_as_an_artifact() -> None:
    steps = [step for _, step in workflow_steps("pr-report")]
    checkout = next(step for step in steps if "actions/checkout" in step.get("uses", ""))
    assert checkout["with"]["fetch-depth"] == 0
    runs = [step.get("run", "") for step in steps]
    assert 'make report BASE="origin/${BASE_REF}"' in runs
    summary = runs.index('cat report.md >> "$GITHUB_STEP_SUMMARY"')
    gather = runs.index("make report-artifact")
    upload = next(i for i, s in enumerate(steps) if "upload-artifact" in s.get("uses", ""))
    assert summary < gather < upload
    assert steps[gather]["env"] == {"PR_NUMBER": "${{ github.event.pull_request.number }}"}
    assert steps[upload]["with"]["name"] == "model-report"
    assert steps[upload]["with"]["path"] == "build/pr-report/"


def test_the_comment_workflow_reads_the_artifact_as_data_and_runs_only_its_own_code() -> None:
    workflow = load("pr-comment")
    assert workflow["on"] == {
        "workflow_run": {"workflows": ["Pull-request report"], "types": ["completed"]}
    }
    assert load("pr-report")["name"] == "Pull-request report"
    job = workflow["jobs"]["comment"]
    assert job["if"] == (
        "github.event.workflow_run.event == 'pull_request' && "
        "github.event.workflow_run.conclusion == 'success'"
    )
    assert job["permissions"] == {"actions": "read", "pull-requests": "write"}
    steps = job["steps"]
    checkout = steps[0]
    assert "actions/checkout" in checkout["uses"]
    assert set(checkout.get("with", {})) == {"persist-credentials"}, "no ref: the default branch"
    download = steps[1]
    assert "download-artifact" in download["uses"]
    assert download["with"]["run-id"] == "${{ github.event.workflow_run.id }}"
    assert download["with"]["path"].startswith("${{ runner.temp }}/"), "outside the checkout"
    post = steps[2]
    assert post["run"] == 'scripts/pr-comment.sh "$REPORT_DIR"'
    assert post["env"]["HEAD_SHA"] == "${{ github.event.workflow_run.head_sha }}"
    assert post["env"]["REPORT_DIR"] == download["with"]["path"]
    # Private repositories' plots stay on GitHub unless the owner opts in; public ones use CML.
    assert post["env"]["PUBLISH_IMAGES"] == (
        "${{ !github.event.repository.private || vars.PUBLISH_REPORT_IMAGES == 'true' }}"
    )
    assert len(steps) == 3


def test_cml_is_pinned_in_the_comment_script() -> None:
    script = (ROOT / "scripts" / "pr-comment.sh").read_text()
    assert "npx --yes @dvcorg/cml@0.20.6" in script
    assert "--watermark-title=" in script


def test_build_smoke_tests_before_pushing() -> None:
    steps = [step for _, step in workflow_steps("build-push")]
    order = [step.get("run") or step.get("uses", "").split("@")[0] for step in steps]
    smoke = order.index('scripts/smoke-test-image.sh "$IMAGE"')
    builds = indexes_of(steps, "docker/build-push-action")
    assert len(builds) == 2
    assert steps[builds[0]]["with"].get("push") is not True
    assert steps[builds[0]]["with"]["cache-from"] == "type=gha"
    assert builds[0] < smoke < builds[1]
    assert steps[builds[1]]["with"]["push"] is True


def test_build_pushes_lowercased_sha_and_latest_tags_to_ghcr() -> None:
    steps = [step for _, step in workflow_steps("build-push")]
    meta = next(step for step in steps if "metadata-action" in step.get("uses", ""))
    assert meta["with"]["images"] == "ghcr.io/${{ github.repository }}"
    assert "type=sha,format=long,prefix=" in meta["with"]["tags"]
    assert "type=raw,value=latest,enable={{is_default_branch}}" in meta["with"]["tags"]
    workflow = load("build-push")
    assert workflow["on"]["push"]["branches"] == ["main"]
    assert "workflow_call" in workflow["on"]


def test_deploy_has_the_inputs_and_runs_in_the_chosen_environment() -> None:
    workflow = load("deploy")
    inputs = workflow["on"]["workflow_dispatch"]["inputs"]
    assert set(inputs) == {
        "image_tag", "environment", "namespace", "replicas", "dry_run", "monitoring", "load_test",
        "force", "canary", "prometheus_url", "rollback_to",
    }  # fmt: skip
    assert inputs["load_test"]["default"] is False
    assert inputs["environment"]["type"] == "choice"
    assert inputs["environment"]["options"] == ["staging", "production"]
    assert inputs["dry_run"]["type"] == "boolean"
    assert inputs["dry_run"]["default"] is False
    assert inputs["replicas"]["type"] == "number"
    job = workflow["jobs"]["deploy"]
    assert job["environment"] == "${{ inputs.environment }}"
    assert workflow["jobs"]["build"]["uses"] == "$/.github/workflows/build-push.yml"


def test_deploy_passes_the_kubeconfig_only_to_the_deploy_step() -> None:
    holders = [
        step
        for _, step in workflow_steps("deploy")
        if "secrets.KUBE_CONFIG" in str(step.get("env", {}))
    ]
    assert len(holders) == 1
    assert holders[0]["run"] == "make deploy MANIFEST=build/seldon-deployment.yaml"
    assert holders[0]["env"]["KUBECONFIG_ENV"] == "KUBE_CONFIG"


def deploy_job_steps() -> list[dict[str, Any]]:
    """The steps of the deploy workflow's deploy job, in order."""
    return load("deploy")["jobs"]["deploy"]["steps"]


def indexes_of(steps: list[dict[str, Any]], uses: str) -> list[int]:
    """Positions of the steps that use the action `uses`."""
    return [i for i, step in enumerate(steps) if step.get("uses", "").startswith(f"{uses}@")]


def index_of(steps: list[dict[str, Any]], run: str = "", uses: str = "") -> int:
    """Position of the one step whose `run:` starts with `run` or whose action is `uses`."""
    found = [
        i
        for i, step in enumerate(steps)
        if (run and step.get("run", "").startswith(run))
        or (uses and step.get("uses", "").startswith(f"{uses}@"))
    ]
    assert len(found) == 1, (run or uses, found)
    return found[0]


@pytest.mark.parametrize(
    ("name", "kind", "default"),
    [("force", "boolean", False), ("canary", "boolean", False),
     ("prometheus_url", "string", ""), ("rollback_to", "string", "")],
)  # fmt: skip
def test_deploy_gate_inputs_have_their_types_and_do_nothing_by_default(
    name: str, kind: str, default: bool | str
) -> None:
    spec = load("deploy")["on"]["workflow_dispatch"]["inputs"][name]
    assert spec["type"] == kind
    assert spec["default"] == default
    assert type(spec["default"]) is type(default)
    assert spec["description"].strip()


def test_the_deploy_step_gets_the_gate_inputs_and_the_registry_through_its_environment() -> None:
    steps = deploy_job_steps()
    step = steps[index_of(steps, run="make deploy ")]
    env = step["env"]
    for variable, name in [
        ("FORCE", "force"), ("CANARY", "canary"), ("PROMETHEUS_URL", "prometheus_url"),
        ("ROLLBACK_TO", "rollback_to"), ("ENVIRONMENT", "environment"),
        ("DRY_RUN", "dry_run"), ("LOAD_TEST", "load_test"),
    ]:  # fmt: skip
        assert env[variable] == f"${{{{ inputs.{name} }}}}", variable
    # The smoke request of the image's own package, unless the model comes from the registry.
    assert env["REQUEST"] == (
        "${{ inputs.rollback_to == '' && 'build/package/sample_request.json' || '' }}"
    )
    assert env["MLFLOW_TRACKING_URI"] == "${{ vars.MLFLOW_TRACKING_URI }}"
    assert env["MLFLOW_TRACKING_USERNAME"] == "${{ secrets.MLFLOW_TRACKING_USERNAME }}"
    assert env["MLFLOW_TRACKING_PASSWORD"] == "${{ secrets.MLFLOW_TRACKING_PASSWORD }}"
    # Only this step reaches the tracking server: the pipeline run of a deploy logs nowhere.
    holders = [other for other in steps if "MLFLOW_" in str(other.get("env", {}))]
    assert holders == [step]
    assert "env" not in load("deploy")["jobs"]["deploy"]


def workflow_value(expression: str, inputs: dict[str, str]) -> str | None:
    """What GitHub puts in an env variable for these inputs; None for secrets and variables."""
    plain = re.fullmatch(r"\$\{\{ inputs\.(\w+) \}\}", expression)
    choice = re.fullmatch(
        r"\$\{\{ inputs\.(\w+) == '' && '([^']*)' \|\| '([^']*)' \}\}", expression
    )
    if plain:
        return inputs[plain[1]]
    if choice:
        return choice[2] if inputs[choice[1]] == "" else choice[3]
    if "${{" in expression:
        assert re.fullmatch(r"\$\{\{ (secrets|vars)\.\w+ \}\}", expression), expression
        return None
    return expression


@pytest.mark.parametrize(
    ("inputs", "options"),
    [
        (
            {"dry_run": "false", "load_test": "true", "force": "true", "canary": "false",
             "prometheus_url": "http://prometheus.monitoring:9090", "rollback_to": "",
             "environment": "staging"},
            ["--load-test", "--force", "--prometheus-url", "http://prometheus.monitoring:9090",
             "--environment", "staging", "--request", "build/package/sample_request.json"],
        ),
        (
            # Text make or the shell would expand arrives as typed.
            {"dry_run": "true", "load_test": "false", "force": "false", "canary": "true",
             "prometheus_url": "", "rollback_to": "v$(shell false) `false` $HOME 'x\"",
             "environment": "production"},
            ["--dry-run", "--canary", "--environment", "production",
             "--rollback-to", "v$(shell false) `false` $HOME 'x\""],
        ),
    ],
    ids=["image", "rollback"],
)  # fmt: skip
def test_make_deploy_turns_the_deploy_steps_environment_into_mlops_deploy_options(
    tmp_path: Path, inputs: dict[str, str], options: list[str]
) -> None:
    steps = deploy_job_steps()
    step = steps[index_of(steps, run="make deploy ")]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    args_file = tmp_path / "args"
    mlops = bin_dir / "mlops"
    mlops.write_text(f"#!/bin/sh\nprintf '%s\\n' \"$@\" > '{args_file}'\n")
    mlops.chmod(0o755)
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in step["env"] and not name.startswith(("MAKE", "MFLAGS"))
    }
    for name, expression in step["env"].items():
        value = workflow_value(str(expression), inputs)
        if value is not None:
            env[name] = value
    # The step's own command, with a stand-in for `mlops` and the environment taken as synced.
    command = [*step["run"].split(), "--silent", "-o", ".venv/.synced", f"BIN={bin_dir}"]
    done = subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    argv = args_file.read_text().splitlines()
    assert argv == [
        "deploy", "--manifest", "build/seldon-deployment.yaml", *options,
        "--kubeconfig-env", "KUBE_CONFIG",
    ]  # fmt: skip


def test_the_build_job_is_skipped_when_rolling_back() -> None:
    condition = load("deploy")["jobs"]["build"]["if"]
    assert "||" not in condition
    assert {part.strip() for part in condition.split("&&")} == {
        "inputs.image_tag == ''",
        "!inputs.dry_run",
        "inputs.rollback_to == ''",
    }


def test_the_image_is_verified_then_deployed_by_digest() -> None:
    job = load("deploy")["jobs"]["deploy"]
    assert job["permissions"] == {
        "contents": "read",
        "packages": "read",
        "attestations": "read",
    }
    steps = job["steps"]
    login = index_of(steps, uses="docker/login-action")
    pull = index_of(steps, run='docker pull "$IMAGE"')
    cosign = index_of(steps, uses="sigstore/cosign-installer")
    verify = index_of(steps, run='scripts/verify-image.sh "$IMAGE" "$GITHUB_REPOSITORY"')
    extract = index_of(steps, run='scripts/image-package.sh "$IMAGE" build/package')
    render = index_of(steps, run=".venv/bin/mlops manifest ")
    deploy = index_of(steps, run="make deploy ")
    assert login < pull < cosign < verify < extract < render < deploy
    assert steps[login]["with"]["registry"] == "ghcr.io"
    assert steps[login]["with"]["password"] == "${{ secrets.GITHUB_TOKEN }}"
    for i in (login, pull, cosign, verify, extract):
        assert steps[i]["if"] == "inputs.rollback_to == ''", steps[i].get("name")
    assert steps[verify]["id"] == "verified"
    assert steps[verify]["run"].endswith('>> "$GITHUB_OUTPUT"')
    for i in (pull, verify):
        assert steps[i]["env"]["IMAGE"] == "${{ steps.image.outputs.tags }}"
    # Everything after the verification uses the digest it resolved, never the tag.
    assert steps[extract]["env"]["IMAGE"] == "${{ steps.verified.outputs.ref }}"
    assert steps[render]["env"]["IMAGE"] == (
        "${{ steps.verified.outputs.ref || steps.image.outputs.tags }}"
    )
    assert '--package "$PACKAGE"' in steps[render]["run"]
    assert steps[render]["env"]["PACKAGE"] == (
        "${{ inputs.rollback_to == '' && 'build/package' || 'models/serving' }}"
    )
    artifact = steps[index_of(steps, uses="actions/upload-artifact")]
    assert "!build/package/" in artifact["with"]["path"].split()


def test_the_deploy_runs_the_pipeline_only_for_a_rollback_or_a_load_test() -> None:
    steps = deploy_job_steps()
    render = index_of(steps, run=".venv/bin/mlops manifest ")
    for command in ("make pull", "make run"):
        i = index_of(steps, run=command)
        assert i < render
        assert steps[i]["if"] == "inputs.rollback_to != '' || inputs.load_test"


@pytest.mark.parametrize("name", NAMES)
def test_inputs_reach_run_steps_only_through_the_environment(name: str) -> None:
    # `${{ }}` inside a shell script is a template-injection hole; env variables are not.
    for _, step in workflow_steps(name):
        assert "${{" not in step.get("run", ""), step.get("name")


def test_every_run_step_is_a_make_target_that_exists_or_a_known_command() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-zA-Z][\w-]*):", makefile, flags=re.MULTILINE))
    for name in NAMES:
        for job_id, step in workflow_steps(name):
            command = " ".join(step.get("run", "").split())
            if not command:
                continue
            if command.startswith("make "):
                target = command.split()[1]
                assert target in targets, f"{name}.{job_id}: no Make target {target!r}"
            else:
                assert command in OTHER_RUN_STEPS, f"{name}.{job_id}: {command}"


def test_the_pushed_image_is_attested_and_signed_by_digest_after_the_push() -> None:
    job = load("build-push")["jobs"]["image"]
    assert job["permissions"] == {
        "contents": "read",
        "packages": "write",
        "id-token": "write",
        "attestations": "write",
    }
    steps = job["steps"]
    push = max(indexes_of(steps, "docker/build-push-action"))
    sbom = index_of(steps, uses="anchore/sbom-action")
    attest_sbom = index_of(steps, uses="actions/attest-sbom")
    provenance = indexes_of(steps, "actions/attest-build-provenance")
    installer = index_of(steps, uses="sigstore/cosign-installer")
    sign = index_of(steps, run="cosign sign ")
    assert push < sbom < attest_sbom < provenance[0] < installer < sign
    digest = "${{ steps.push.outputs.digest }}"
    assert steps[sbom]["with"]["format"] == "spdx-json"
    assert steps[attest_sbom]["with"]["subject-digest"] == digest
    assert steps[attest_sbom]["with"]["sbom-path"] == steps[sbom]["with"]["output-file"]
    image, model = (steps[i]["with"] for i in provenance)
    assert image["subject-digest"] == digest
    assert image["push-to-registry"] is True
    assert steps[attest_sbom]["with"]["push-to-registry"] is True
    # The model files' own sha256 are attested too.
    assert model == {"subject-path": "models/serving/model.*"}
    assert steps[sign]["env"]["DIGEST"] == digest
    assert steps[sign]["run"].endswith('"$IMAGE_NAME@$DIGEST"'), "signed by digest, not by tag"
    assert "model-sha256=$MODEL_SHA256" in steps[sign]["run"]


def test_the_lock_files_are_audited_when_they_change_and_every_week() -> None:
    workflow = load("audit")
    for event in ("pull_request", "push"):
        assert {"requirements/**", "security/**"} <= set(workflow["on"][event]["paths"])
    assert workflow["on"]["push"]["branches"] == ["main"]
    assert workflow["on"]["schedule"], "advisories appear while the locks stay the same"
    job = workflow["jobs"]["locks"]
    assert job["permissions"] == {"contents": "read"}
    runs = [step["run"] for step in job["steps"] if "run" in step]
    # The default lock files of `mlops audit locks`: serve.lock and dev.lock.
    assert runs == ['make audit SUMMARY="$GITHUB_STEP_SUMMARY"']


def test_the_image_is_audited_and_scanned_before_it_is_pushed() -> None:
    steps = load("build-push")["jobs"]["image"]["steps"]
    audit_lock = index_of(steps, run="make audit LOCKS=requirements/serve.lock")
    builds = indexes_of(steps, "docker/build-push-action")
    smoke = index_of(steps, run="scripts/smoke-test-image.sh")
    scan = index_of(steps, uses="anchore/scan-action")
    gate = index_of(steps, run="make audit-image")
    login = index_of(steps, uses="docker/login-action")
    assert audit_lock < builds[0] < smoke < scan < gate < login < builds[1]
    scanner = steps[scan]["with"]
    assert scanner["image"] == "${{ fromJSON(steps.meta.outputs.json).tags[0] }}"
    # Grype reports; the gate step fails, applying security/ignore.yaml to that very report.
    assert scanner["fail-build"] is False
    assert scanner["output-format"] == "json"
    assert f"SCAN={scanner['output-file']}" in steps[gate]["run"]
    assert "if" not in steps[gate], "the gate runs whenever the scan did"
