#!/usr/bin/env bash
# Pull or push DVC-tracked files when the project has a default DVC remote. Without one, say why
# nothing happens and succeed: the pipeline's raw data is in git, so `dvc repro` rebuilds the rest,
# and the same workflows run before and after a remote is added.
#
# usage: scripts/dvc-remote.sh pull|push      (DVC=path/to/dvc to choose the binary)
set -euo pipefail

if [[ $# -ne 1 || ( $1 != pull && $1 != push ) ]]; then
    echo "usage: $0 pull|push" >&2
    exit 2
fi
action=$1
dvc=${DVC:-dvc}

if ! remote=$("$dvc" remote default 2>/dev/null) || [[ -z $remote ]]; then
    echo "dvc $action: skipped, no default DVC remote is configured" \
        "(add one with: dvc remote add -d NAME URL; see docs/workflows.md)."
    exit 0
fi

echo "dvc $action: using remote '$remote'"
if [[ $action == pull ]]; then
    # --allow-missing: outputs never pushed (for example a stage added on this branch) are rebuilt
    # by `dvc repro` instead of failing the pull.
    exec "$dvc" pull --allow-missing
fi
# --run-cache also uploads stage run records, so a later `dvc repro` elsewhere can skip stages.
exec "$dvc" push --run-cache
