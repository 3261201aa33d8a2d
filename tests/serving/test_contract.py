"""The package's metadata contract: a reference the server cannot use is refused on reading."""

from __future__ import annotations

import json
import re

import pytest

from mlops_template.serving.contract import ContractError, PackageMetadata


@pytest.fixture
def metadata(serving_package) -> dict:
    """The metadata.json of a package built from the bundled data (penguins)."""
    return json.loads((serving_package / "metadata.json").read_text())


def test_package_metadata_round_trips(metadata):
    assert PackageMetadata.from_dict(metadata).to_dict() == metadata


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r["bins"]["year"].update(edges=[2008.0, 2007.0]), "distinct numbers in order"),
        (lambda r: r["bins"]["year"].update(edges=[2007.0, 2007.0]), "distinct numbers in order"),
        (lambda r: r["bins"]["year"]["shares"].pop(), "one share more than edges"),
        (lambda r: r["bins"]["year"]["shares"].__setitem__(0, 1.5), "between 0 and 1"),
        (lambda r: r["class_shares"].pop("Adelie"), "these classes and features only"),
        (lambda r: r["missing_shares"].update(wings=0.0), "these classes and features only"),
        (lambda r: r["bins"].update(wings=r["bins"]["year"]), "these classes and features only"),
        (lambda r: r.update(drift=1), "unknown ['drift']"),
        (lambda r: r.update(bins=[]), "reference.bins must map"),
    ],
)
def test_a_reference_the_server_cannot_use_is_refused(metadata, change, message):
    change(metadata["reference"])
    with pytest.raises(ContractError, match=re.escape(message)):
        PackageMetadata.from_dict(metadata)
