#!/usr/bin/env bash
# Print the Markdown job summary for a pushed image: its reference, digest and the sha256 of the
# model file inside it (from models/serving/metadata.json), so a deploy can be traced to a model.
#
# usage: scripts/image-summary.sh IMAGE [DIGEST] [METADATA]   (PYTHON=... to choose the interpreter)
set -euo pipefail

if [[ $# -lt 1 || $# -gt 3 || -z $1 ]]; then
    echo "usage: $0 IMAGE [DIGEST] [METADATA]" >&2
    exit 2
fi
image=$1
digest=${2:-}
metadata=${3:-models/serving/metadata.json}

if [[ ! -f $metadata ]]; then
    echo "error: $metadata not found; run the pipeline (make run) first" >&2
    exit 2
fi
model_sha256=$("${PYTHON:-python3}" -c '
import json, sys
with open(sys.argv[1], encoding="utf-8") as handle:
    print(json.load(handle)["model_sha256"])
' "$metadata" 2>/dev/null) || { echo "error: $metadata has no model_sha256" >&2; exit 2; }

echo "### Image"
echo
echo "| | |"
echo "| --- | --- |"
echo "| image | \`$image\` |"
if [[ -n $digest ]]; then
    echo "| digest | \`$digest\` |"
    echo "| pull by digest | \`${image%:*}@$digest\` |"
fi
echo "| model sha256 | \`$model_sha256\` |"
