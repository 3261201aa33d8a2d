"""Licence guardrail: every package the serving image installs is under an open licence.

seldon-core 1.18 and later are under the Business Source License 1.1, which forbids production use
without a commercial licence; the template pins 1.17.1 (Apache-2.0). A bump to 1.18+, or any other
dependency under a source-available licence, fails here, naming the package and why. The licences
are read from the metadata of the packages installed in .venv-serve, which is built from
requirements/serve.lock exactly as the image is.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from .conftest import SERVE_PYTHON

# Source-available or non-commercial licences: never in an image people deploy to production.
NOT_OPEN = re.compile(
    r"business source|\bbusl\b|\bbsl-1|server side public|\bsspl\b|commons clause|"
    r"elastic license|polyform|proprietary|non-?commercial|confluent community",
    re.IGNORECASE,
)
# SPDX identifiers and licence names that are open (OSI-approved, or public-domain equivalents).
OPEN = re.compile(
    r"^(mit(-0)?|mit license|bsd(-[23]-clause)?|bsd [23]-clause license|new bsd|apache(-2\.0| 2\.0|"
    r" license 2\.0| software license 2\.0)?|mpl-2\.0|psf-2\.0|isc|unlicense|cc0-1\.0|"
    r"zlib|lgpl-[23]\.[01](-only|-or-later)?|python software foundation license)$",
    re.IGNORECASE,
)

DUMP = """
import json
from importlib import metadata
print(json.dumps([
    {
        "name": d.metadata["Name"],
        "version": d.version,
        "expression": d.metadata.get("License-Expression"),
        "license": d.metadata.get("License"),
        "classifiers": [
            c for c in d.metadata.get_all("Classifier") or [] if c.startswith("License")
        ],
    }
    for d in metadata.distributions()
]))
"""


def licence_problem(package: dict) -> str | None:
    """Why a package's licence is not acceptable, or None when it is open."""
    # The License field is sometimes the whole licence text, bundled libraries' licences included:
    # its first line names it.
    first_line = (package["license"] or "").strip().partition("\n")[0]
    texts = [package["expression"] or "", first_line, *package["classifiers"]]
    for text in texts:
        if NOT_OPEN.search(text):
            return f"its licence is not open ({text[:80]!r})"
    if package["expression"]:
        identifiers = re.split(r"\s+(?:OR|AND|WITH)\s+|[()]", package["expression"])
        unknown = [i for i in identifiers if i.strip() and not OPEN.match(i.strip())]
        return (
            f"its licence expression names {unknown}, not a known open licence" if unknown else None
        )
    if any("OSI Approved" in classifier for classifier in package["classifiers"]):
        return None
    if OPEN.match(first_line):
        return None
    return "its metadata names no licence this check knows to be open; read it and extend OPEN"


def installed_serving_packages() -> list[dict]:
    if not SERVE_PYTHON.exists():
        pytest.fail(f"{SERVE_PYTHON} is missing: run `make setup` to build .venv-serve")
    done = subprocess.run(
        [str(SERVE_PYTHON), "-c", DUMP], capture_output=True, text=True, check=True, timeout=60
    )
    return json.loads(done.stdout)


def test_every_serving_package_is_under_an_open_licence():
    packages = installed_serving_packages()
    assert any(p["name"] == "seldon-core" for p in packages), "not the serving environment"
    problems = [
        f"{p['name']} {p['version']}: {problem}"
        for p in sorted(packages, key=lambda p: p["name"].lower())
        if (problem := licence_problem(p))
    ]
    assert not problems, (
        "the serving image would ship packages that are not open source (seldon-core 1.18+ is "
        "under the Business Source License: keep 1.17.1, README 'Dependencies'):\n  "
        + "\n  ".join(problems)
    )


@pytest.mark.parametrize(
    "package",
    [
        # seldon-core 1.18.2: `License: Business Source License 1.1` in its wheel's METADATA.
        {"expression": None, "license": "Business Source License 1.1", "classifiers": []},
        {"expression": "BUSL-1.1", "license": None, "classifiers": []},
        {"expression": "SSPL-1.0", "license": None, "classifiers": []},
        {
            "expression": None,
            "license": "Elastic License 2.0",
            "classifiers": ["License :: Other/Proprietary License"],
        },
        {"expression": "MIT AND LicenseRef-Commercial", "license": None, "classifiers": []},
        {"expression": None, "license": None, "classifiers": []},
    ],
)
def test_a_package_that_is_not_open_source_is_named(package):
    assert licence_problem(package)


@pytest.mark.parametrize(
    "package",
    [
        {"expression": "Apache-2.0 OR BSD-2-Clause", "license": None, "classifiers": []},
        {"expression": None, "license": "Apache 2.0", "classifiers": []},
        {
            "expression": None,
            "license": "Copyright (c) 2005-2023, NumPy Developers.",
            "classifiers": ["License :: OSI Approved :: BSD License"],
        },
    ],
)
def test_open_licences_pass(package):
    assert licence_problem(package) is None
