#!/usr/bin/env bash
# Print the Markdown job summary for a pushed image: its reference, digest and the sha256 of the
# model file inside it (read by the package's own contract.py), so a deploy can be traced to a model.
#
# usage: scripts/image-summary.sh IMAGE [DIGEST] [PACKAGE_DIR]   (default PACKAGE_DIR: models/serving;
#        PYTHON=... to choose the interpreter)
set -euo pipefail

if [[ $# -lt 1 || $# -gt 3 || -z $1 ]]; then
    echo "usage: $0 IMAGE [DIGEST] [PACKAGE_DIR]" >&2
    exit 2
fi
image=$1
digest=${2:-}
package=${3:-models/serving}

if [[ ! -f $package/contract.py ]]; then
    echo "error: $package/contract.py not found; run the pipeline (make run) first" >&2
    exit 2
fi
# contract.py validates the metadata and prints one line naming the problem if it cannot.
model_sha256=$("${PYTHON:-python3}" "$package/contract.py" model_sha256) || exit 2

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
