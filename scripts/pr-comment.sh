#!/usr/bin/env bash
# Post or update the pull-request report comment from the report workflow's artifact.
#
# Usage: scripts/pr-comment.sh DIR   (DIR holds report.md, its images under report/, pr-number)
# Environment: GITHUB_TOKEN, REPOSITORY (owner/name), HEAD_SHA (the reported commit, from the
# workflow_run event), ARTIFACT_URL (where the images are), PUBLISH_IMAGES (true: CML uploads the
# images to its public host; otherwise they stay on GitHub as a link to the artifact),
# CML (the CML command; pinned below). Prints, and adds to the job summary, which path it took.
#
# The artifact is data from a run of the pull request's code: mlops_template.pr_comment checks
# the number and that the pull request's head is HEAD_SHA before anything is posted.
set -euo pipefail

dir=${1:?usage: scripts/pr-comment.sh DIR}
: "${REPOSITORY:?}" "${HEAD_SHA:?}" "${ARTIFACT_URL:?}" "${GITHUB_TOKEN:?}"
cml=${CML:-npx --yes @dvcorg/cml@0.20.6}
title="Model report"
here=$(cd "$(dirname "$0")/.." && pwd)
comment() {
    PYTHONPATH="$here/src" python3 -m mlops_template.pr_comment --report "$dir/report.md" \
        --repository "$REPOSITORY" --pull-request-file "$dir/pr-number" --head-sha "$HEAD_SHA" \
        --artifact-url "$ARTIFACT_URL" --title "$title" "$@"
}

number=$(comment --check)
path=""
if [[ ${PUBLISH_IMAGES:-false} == true ]]; then
    # shellcheck disable=SC2086 # $cml is a command and its arguments
    if REPO_TOKEN=$GITHUB_TOKEN $cml comment update --target="pr/$number" \
        --watermark-title="$title" "$dir/report.md"; then
        path="CML, images on CML's public host"
    else
        echo "CML could not post the comment; posting it through GitHub's API instead" >&2
    fi
fi
if [[ -z $path ]]; then
    comment
    path="GitHub's API, images linked to the run's artifact"
fi
said="Report comment on #$number posted through $path."
echo "$said"
if [[ -n ${GITHUB_STEP_SUMMARY:-} ]]; then
    echo "$said" >>"$GITHUB_STEP_SUMMARY"
fi
