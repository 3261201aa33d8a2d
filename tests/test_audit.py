"""The vulnerability gate: real pip-audit against a local OSV stand-in, and Grype reports.

No vulnerability service can be reached from the test machine, so OSV is a local HTTP server
speaking the two calls the gate makes: `POST /v1/query` (what pip-audit sends for each pinned
package) and `GET /v1/vulns/{id}` (the record the severity is read from). Everything else runs for
real: pip-audit parses the lock files, the gate reads `security/ignore.yaml`, the CLI exits.
"""

from __future__ import annotations

import datetime
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from mlops_template import audit, cli
from tests.conftest import JsonHandler, local_http_server

ROOT = Path(__file__).resolve().parents[1]
TODAY = datetime.datetime.now(datetime.UTC).date()


def advisory(
    advisory_id: str,
    package: str,
    fixed: str | None,
    aliases: tuple[str, ...] = (),
    rating: str | None = "HIGH",
    vector: str | None = None,
) -> dict:
    """An OSV record, shaped like GitHub's and PyPA's records on api.osv.dev."""
    events = [{"introduced": "0"}] + ([{"fixed": fixed}] if fixed else [])
    record = {
        "id": advisory_id,
        "aliases": list(aliases),
        "summary": f"an advisory for {package}",
        "affected": [
            {
                "package": {"name": package, "ecosystem": "PyPI"},
                "ranges": [{"type": "ECOSYSTEM", "events": events}],
            }
        ],
    }
    if rating:
        record["database_specific"] = {"severity": rating}
    if vector:
        record["severity"] = [{"type": "CVSS_V3", "score": vector}]
    return record


class FakeOsv:
    """api.osv.dev's query and record endpoints over a fixed set of advisories."""

    def __init__(self) -> None:
        self.records: dict[str, dict] = {}
        self.affects: dict[tuple[str, str], list[str]] = {}
        self.queried: list[tuple[str, str]] = []
        self.url = ""

    def add(self, record: dict, version: str, listed: bool = True) -> None:
        """Serve `record` by id; if `listed`, also when its package at `version` is queried."""
        self.records[record["id"]] = record
        if listed:
            package = record["affected"][0]["package"]["name"]
            self.affects.setdefault((package, version), []).append(record["id"])

    def handler(self):
        fake = self

        class Handler(JsonHandler):
            def do_POST(self):
                query = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                key = (query["package"]["name"], query["version"])
                fake.queried.append(key)
                ids = fake.affects.get(key, [])
                self.answer(200, {"vulns": [fake.records[i] for i in ids]} if ids else {})

            def do_GET(self):
                advisory_id = self.path.rsplit("/", 1)[-1]
                if advisory_id in fake.records:
                    self.answer(200, fake.records[advisory_id])
                else:
                    self.answer(404, {"code": 5, "message": "Bug not found."})

        return Handler


@pytest.fixture
def osv():
    fake = FakeOsv()
    with local_http_server(fake.handler()) as url:
        fake.url = f"{url}/v1"
        yield fake


def write_ignore(path: Path, *entries: dict) -> Path:
    path.write_text(yaml.safe_dump({"ignore": list(entries)}, sort_keys=False), encoding="utf-8")
    return path


def entry(advisory_id: str, package: str, expires: datetime.date, **extra) -> dict:
    return {
        "id": advisory_id,
        "package": package,
        "reason": "only reachable through the gRPC port, which is off",
        "expires": expires.isoformat(),
        **extra,
    }


def audit_locks(capsys, osv: FakeOsv, locks: list[Path], ignore: Path, *options: str):
    service = ["--osv-api", osv.url, "--ignore-file", str(ignore)]
    code = cli.main(["audit", "locks", *map(str, locks), *service, *options])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def lock(tmp_path):
    path = tmp_path / "serve.lock"
    path.write_text("gunicorn==20.1.0\nprotobuf==3.20.3\nrequests==2.34.2\n", encoding="utf-8")
    return path


GUNICORN = advisory("GHSA-w3h3-4rj7-4ph4", "gunicorn", "22.0.0", aliases=("CVE-2024-1135",))


def test_a_fixable_high_finding_fails_naming_the_package_advisory_and_fix(
    osv, lock, tmp_path, capsys
):
    osv.add(GUNICORN, "20.1.0")
    code, out, err = audit_locks(capsys, osv, [lock], write_ignore(tmp_path / "ignore.yaml"))
    assert code == 1
    assert "3 packages, 1 known vulnerability" in out
    assert re.search(
        r"BLOCKING\s+gunicorn 20\.1\.0  CVE-2024-1135 \(GHSA-w3h3-4rj7-4ph4\)  high, "
        r"fixed in 22\.0\.0",
        out,
    )
    assert "FAILED: 1 finding(s) at or above high" in err
    assert "Traceback" not in err
    # Every pinned package was asked about, by its pinned version.
    assert sorted(osv.queried) == [
        ("gunicorn", "20.1.0"),
        ("protobuf", "3.20.3"),
        ("requests", "2.34.2"),
    ]


def test_a_finding_the_ignore_file_accepts_passes_with_its_reason_and_expiry(
    osv, lock, tmp_path, capsys
):
    osv.add(GUNICORN, "20.1.0")
    until = TODAY + datetime.timedelta(days=30)
    # Listed by its CVE alias, while OSV reports it under its GHSA id.
    ignore = write_ignore(tmp_path / "ignore.yaml", entry("CVE-2024-1135", "Gunicorn", until))
    code, out, _ = audit_locks(capsys, osv, [lock], ignore)
    assert code == 0
    assert re.search(rf"ignored\s+gunicorn 20\.1\.0 .* until {until}: only reachable", out)
    assert "passed" in out


def test_an_expired_entry_hides_nothing_and_says_so(osv, lock, tmp_path, capsys):
    osv.add(GUNICORN, "20.1.0")
    yesterday = TODAY - datetime.timedelta(days=1)
    ignore = write_ignore(
        tmp_path / "ignore.yaml", entry("GHSA-w3h3-4rj7-4ph4", "gunicorn", yesterday)
    )
    code, out, err = audit_locks(capsys, osv, [lock], ignore)
    assert code == 1
    assert f"its entry expired on {yesterday}" in out
    assert f"GHSA-w3h3-4rj7-4ph4 (gunicorn) expired on {yesterday}" in err


def test_an_entry_for_another_package_hides_nothing(osv, lock, tmp_path, capsys):
    osv.add(GUNICORN, "20.1.0")
    until = TODAY + datetime.timedelta(days=30)
    ignore = write_ignore(tmp_path / "ignore.yaml", entry("CVE-2024-1135", "requests", until))
    code, _, _ = audit_locks(capsys, osv, [lock], ignore)
    assert code == 1


def test_findings_below_the_cut_off_or_without_a_fix_are_reported_not_failed(
    osv, lock, tmp_path, capsys
):
    osv.add(advisory("GHSA-aaaa-bbbb-cccc", "requests", "2.40.0", rating="MODERATE"), "2.34.2")
    osv.add(advisory("GHSA-dddd-eeee-ffff", "protobuf", None, rating="CRITICAL"), "3.20.3")
    ignore = write_ignore(tmp_path / "ignore.yaml")
    code, out, _ = audit_locks(capsys, osv, [lock], ignore)
    assert code == 0
    assert re.search(r"no fix\s+protobuf 3\.20\.3  GHSA-dddd-eeee-ffff  critical, no fix", out)
    assert "requests" not in out  # medium: below the cut-off, counted in the summary only
    # The stricter policy fails on it; a lower cut-off fails on the medium one.
    assert audit_locks(capsys, osv, [lock], ignore, "--fail-on-unfixed")[0] == 1
    assert audit_locks(capsys, osv, [lock], ignore, "--fail-on", "medium")[0] == 1


def test_severity_comes_from_the_cvss_vector_or_an_alias_and_unknown_counts_as_high(
    osv, lock, tmp_path, capsys
):
    # A PyPA record with no rating, whose GitHub alias rates it; a CVSS vector alone (7.5: high);
    # and a record nothing rates.
    osv.add(
        advisory(
            "PYSEC-2024-1", "gunicorn", "22.0.0", aliases=("GHSA-1111-2222-3333",), rating=None
        ),
        "20.1.0",
    )
    osv.add(
        advisory("GHSA-1111-2222-3333", "gunicorn", "22.0.0", rating="CRITICAL"),
        "20.1.0",
        listed=False,
    )
    vector = "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:N/I:N/A:H"
    osv.add(
        advisory("GHSA-4444-5555-6666", "requests", "2.40.0", rating=None, vector=vector), "2.34.2"
    )
    osv.add(advisory("PYSEC-2024-2", "protobuf", "4.25.8", rating=None), "3.20.3")
    code, out, _ = audit_locks(capsys, osv, [lock], write_ignore(tmp_path / "ignore.yaml"))
    assert code == 1
    assert "gunicorn 20.1.0  GHSA-1111-2222-3333 (PYSEC-2024-1)  critical" in out
    assert "requests 2.34.2  GHSA-4444-5555-6666  high" in out
    assert "protobuf 3.20.3  PYSEC-2024-2  unknown" in out


def test_the_summary_is_a_markdown_table_of_what_matters(osv, lock, tmp_path, capsys):
    osv.add(GUNICORN, "20.1.0")
    osv.add(advisory("GHSA-aaaa-bbbb-cccc", "requests", "2.40.0", rating="LOW"), "2.34.2")
    summary = tmp_path / "summary.md"
    summary.write_text("earlier steps' summary\n", encoding="utf-8")
    audit_locks(
        capsys, osv, [lock], write_ignore(tmp_path / "ignore.yaml"), "--summary", str(summary)
    )
    text = summary.read_text(encoding="utf-8")
    assert text.startswith("earlier steps' summary\n### Lock file audit: failed")
    assert (
        "| blocking | gunicorn | 20.1.0 | CVE-2024-1135 (GHSA-w3h3-4rj7-4ph4) | high | 22.0.0 |"
        in text
    )
    assert "1 finding(s) below high are not listed." in text


def test_the_committed_locks_pass_with_the_committed_ignore_file(osv, capsys):
    # protobuf 3.20.3's advisories as OSV holds them, under their GitHub ids; every other package
    # of both lock files is clean here. All of them must be asked about.
    for ghsa, cve in [
        ("GHSA-8qvm-5x2c-j2w7", "CVE-2025-4565"),
        ("GHSA-7gcm-g887-7qv7", "CVE-2026-0994"),
    ]:
        osv.add(advisory(ghsa, "protobuf", "4.25.8", aliases=(cve,)), "3.20.3")
    locks = [ROOT / "requirements/serve.lock", ROOT / "requirements/dev.lock"]
    code, out, err = audit_locks(capsys, osv, locks, ROOT / audit.IGNORE_FILE)
    assert code == 0, out + err
    assert out.count("ignored   protobuf 3.20.3") == 2
    expected = set()
    for path in locks:
        for line in path.read_text(encoding="utf-8").splitlines():
            if re.match(r"^[A-Za-z0-9]", line):
                requirement = Requirement(line.rstrip(" \\"))
                if requirement.marker is None or requirement.marker.evaluate():
                    expected.add(
                        (canonicalize_name(requirement.name), str(requirement.specifier)[2:])
                    )
    assert {(canonicalize_name(name), version) for name, version in osv.queried} == expected
    assert len(expected) > 200


def test_the_committed_ignore_file_is_valid_and_names_real_packages():
    entries = audit.load_ignore(ROOT / audit.IGNORE_FILE, TODAY)
    assert entries, "protobuf 3.20.3's advisories are accepted there"
    serve_lock = (ROOT / "requirements/serve.lock").read_text(encoding="utf-8")
    for item in entries:
        assert re.search(rf"^{re.escape(item.package)}==", serve_lock, re.MULTILINE), item.label


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"reason": None}, r"missing reason"),
        ({"reason": "fine"}, r"'reason' must say why"),
        ({"expires": "soon"}, r"'expires' must be a date like 2027-01-31, got 'soon'"),
        ({"expires": "2999-01-01"}, r"more than 366 days away; choose a date on or before"),
        ({"id": "not an id"}, r"'not an id' is not an advisory id"),
        ({"owner": "me"}, r"unknown key\(s\) owner"),
        ({"aliases": "CVE-2024-1"}, r"'aliases' must be a list"),
    ],
)
def test_a_bad_ignore_entry_is_one_line_naming_the_entry(
    tmp_path, lock, osv, capsys, change, message
):
    raw = entry("CVE-2024-1135", "gunicorn", TODAY)
    raw.update(change)
    raw = {key: value for key, value in raw.items() if value is not None}
    code, _, err = audit_locks(capsys, osv, [lock], write_ignore(tmp_path / "ignore.yaml", raw))
    assert code == 2
    assert re.search(rf"^error: .*ignore\.yaml, entry 1: .*{message}", err)
    assert "Traceback" not in err
    assert osv.queried == []  # checked before anything is audited


def test_a_duplicate_entry_and_a_broken_file_are_refused(tmp_path, lock, osv, capsys):
    same = entry("CVE-2024-1135", "gunicorn", TODAY)
    ignore = write_ignore(tmp_path / "ignore.yaml", same, {**same, "aliases": []})
    code, _, err = audit_locks(capsys, osv, [lock], ignore)
    assert code == 2
    assert "entry 2: CVE-2024-1135 for gunicorn is already entry 1" in err
    ignore.write_text("ignore: [\n", encoding="utf-8")
    code, _, err = audit_locks(capsys, osv, [lock], ignore)
    assert code == 2
    assert "is not valid YAML" in err
    ignore.write_text("- id: CVE-2024-1135\n", encoding="utf-8")
    code, _, err = audit_locks(capsys, osv, [lock], ignore)
    assert code == 2
    assert "must be a mapping with one key, 'ignore'" in err


def test_an_unreachable_osv_or_a_missing_lock_is_one_line(tmp_path, lock, capsys):
    ignore = write_ignore(tmp_path / "ignore.yaml")
    code = cli.main(
        [
            "audit",
            "locks",
            str(lock),
            "--osv-api",
            "http://127.0.0.1:9/v1",
            "--ignore-file",
            str(ignore),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"error: pip-audit could not audit {lock}: ")
    assert len(err.strip().splitlines()) == 1
    code = cli.main(["audit", "locks", str(tmp_path / "nope.lock"), "--ignore-file", str(ignore)])
    assert code == 2
    assert f"{tmp_path / 'nope.lock'} does not exist" in capsys.readouterr().err


def test_make_audit_runs_the_gate_on_the_lock_files(osv, tmp_path):
    # What the audit workflow runs: the Makefile passes LOCKS and SUMMARY through.
    osv.add(GUNICORN, "20.1.0")
    lock = tmp_path / "x.lock"
    lock.write_text("gunicorn==20.1.0\n", encoding="utf-8")
    summary = tmp_path / "summary.md"
    done = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "audit",
            f"LOCKS={lock}",
            f"OSV_API={osv.url}",
            f"SUMMARY={summary}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode != 0
    assert "BLOCKING  gunicorn 20.1.0" in done.stdout
    assert "### Lock file audit: failed" in summary.read_text(encoding="utf-8")


# --- the image: Grype's JSON report -------------------------------------------------------------


def grype_match(
    vulnerability_id: str,
    package: str,
    version: str,
    severity: str,
    state: str,
    fixed: list[str],
    related: tuple[str, ...] = (),
    kind: str = "deb",
    path: str = "/var/lib/dpkg/status",
) -> dict:
    """One entry of Grype's `matches`, as its JSON presenter writes it."""
    return {
        "vulnerability": {
            "id": vulnerability_id,
            "severity": severity,
            "fix": {"versions": fixed, "state": state},
        },
        "relatedVulnerabilities": [{"id": item} for item in related],
        "artifact": {
            "name": package,
            "version": version,
            "type": kind,
            "locations": [{"path": path}],
        },
    }


def scan_report(tmp_path: Path, *matches: dict) -> Path:
    path = tmp_path / "image-scan.json"
    report = {
        "matches": list(matches),
        "source": {"type": "image", "target": {"userInput": "ghcr.io/acme/model:abc"}},
    }
    path.write_text(json.dumps(report), encoding="utf-8")
    return path


def audit_image(capsys, report: Path, ignore: Path, *options: str):
    code = cli.main(["audit", "image", str(report), "--ignore-file", str(ignore), *options])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_image_gate_fails_on_a_fixable_high_finding_and_accepts_listed_ones(tmp_path, capsys):
    protobuf = grype_match(
        "GHSA-8qvm-5x2c-j2w7",
        "protobuf",
        "3.20.3",
        "High",
        "fixed",
        ["4.25.8"],
        related=("CVE-2025-4565",),
        kind="python",
        path="/opt/venv/lib/python3.11/site-packages",
    )
    openssl = grype_match("CVE-2026-1000", "libssl3", "3.0.15-1", "High", "fixed", ["3.0.16-1"])
    report = scan_report(
        tmp_path,
        protobuf,
        {**protobuf, "artifact": {**protobuf["artifact"], "locations": [{"path": "/elsewhere"}]}},
        openssl,
        grype_match("CVE-2023-45853", "zlib1g", "1:1.2.13", "Critical", "wont-fix", []),
        grype_match("CVE-2026-2000", "libc6", "2.36-9", "Medium", "fixed", ["2.36-10"]),
    )
    ignore = ROOT / audit.IGNORE_FILE
    code, out, err = audit_image(capsys, report, ignore)
    assert code == 1
    assert "ghcr.io/acme/model:abc: 5 matches, 4 known vulnerabilities" in out
    assert re.search(
        r"BLOCKING\s+libssl3 3\.0\.15-1  CVE-2026-1000  high, fixed in 3\.0\.16-1", out
    )
    assert re.search(r"ignored\s+protobuf 3\.20\.3  CVE-2025-4565 \(GHSA-8qvm-5x2c-j2w7\)", out)
    assert re.search(r"no fix\s+zlib1g 1:1\.2\.13  CVE-2023-45853  critical, no fix", out)
    assert "libc6" not in out
    assert "FAILED: 1 finding(s)" in err
    # Without the OpenSSL finding, the image passes.
    report = scan_report(tmp_path, protobuf)
    assert audit_image(capsys, report, ignore)[0] == 0


def test_a_report_that_is_not_grype_json_is_one_line(tmp_path, capsys):
    ignore = ROOT / audit.IGNORE_FILE
    missing = tmp_path / "missing.json"
    code, _, err = audit_image(capsys, missing, ignore)
    assert code == 2
    assert f"{missing} does not exist: run the image scan first" in err
    broken = tmp_path / "broken.json"
    broken.write_text("<html>", encoding="utf-8")
    code, _, err = audit_image(capsys, broken, ignore)
    assert code == 2
    assert "is not JSON" in err
    broken.write_text('{"matches": [{"vulnerability": {"id": "CVE-1"}}]}', encoding="utf-8")
    code, _, err = audit_image(capsys, broken, ignore)
    assert code == 2
    assert "match 1 is not Grype's: KeyError('artifact')" in err
    broken.write_text('{"runs": []}', encoding="utf-8")
    code, _, err = audit_image(capsys, broken, ignore)
    assert code == 2
    assert "not Grype's JSON (no 'matches' list)" in err
