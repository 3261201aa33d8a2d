"""`mlops audit`: the known-vulnerability gate for the lock files and the serving image.

Two scanners find the advisories, one policy decides what fails:

- `mlops audit locks`: PyPA's pip-audit reads each lock file and asks OSV (api.osv.dev) about every
  pinned package; the severity of each finding is read from its OSV record (GitHub's rating, else
  the CVSS vector's).
- `mlops audit image`: the JSON report of Grype (anchore/scan-action), run on the built image
  before it is pushed.

A finding fails the gate when its severity is at or above the cut-off (high), a fixed release
exists, and `security/ignore.yaml` does not list it with a reason and an expiry date that has not
passed. A finding with no fixed release is reported, not failed (`--fail-on-unfixed` fails it too):
there is nothing to upgrade to, and the day a fix ships it starts failing. An expired entry hides
nothing. A severity that cannot be read counts as at or above the cut-off.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import re
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from packaging.utils import canonicalize_name as canonical

from mlops_template.errors import UserError

log = logging.getLogger(__name__)

IGNORE_FILE = Path("security/ignore.yaml")
LOCK_FILES = (Path("requirements/serve.lock"), Path("requirements/dev.lock"))
OSV_API = "https://api.osv.dev/v1"
SEVERITIES = ("negligible", "low", "medium", "high", "critical")
FAIL_ON = "high"
UNKNOWN = "unknown"
# An ignore entry is a decision to look again: at most a year ahead.
MAX_IGNORE_DAYS = 366
MIN_REASON_CHARS = 20
IGNORE_KEYS = {"id", "aliases", "package", "reason", "expires"}
ADVISORY_ID = re.compile(r"^[A-Za-z][A-Za-z0-9]*-[A-Za-z0-9._:-]+$")
PIP_AUDIT_TIMEOUT_S = 900
OSV_TIMEOUT_S = 30

# GitHub's ratings (OSV `database_specific.severity`), Grype's, and CVSS's qualitative ones.
SEVERITY_NAMES = {
    "none": "negligible",
    "negligible": "negligible",
    "low": "low",
    "moderate": "medium",
    "medium": "medium",
    "high": "high",
    "critical": "critical",
}


@dataclass(frozen=True)
class IgnoreEntry:
    """One accepted advisory: its ids, the package it is accepted for, why, and until when."""

    ids: frozenset[str]
    package: str
    reason: str
    expires: datetime.date

    @property
    def label(self) -> str:
        return f"{min(self.ids, key=_id_order)} ({self.package})"

    def covers(self, finding: Finding) -> bool:
        """Whether this entry names the finding's package and one of its ids (or aliases)."""
        return canonical(self.package) == canonical(finding.package) and bool(
            self.ids & set(finding.ids)
        )


@dataclass(frozen=True)
class Finding:
    """A known vulnerability of one package version."""

    package: str
    version: str
    ids: tuple[str, ...]
    severity: str
    fixed_in: tuple[str, ...]

    @property
    def has_fix(self) -> bool:
        return bool(self.fixed_in)

    @property
    def advisory(self) -> str:
        first, *others = self.ids
        return f"{first} ({', '.join(others)})" if others else first


@dataclass(frozen=True)
class Judged:
    """A finding and what the gate made of it: blocking, ignored, no fix, or below the cut-off."""

    finding: Finding
    status: str
    note: str = ""

    @property
    def blocking(self) -> bool:
        return self.status == "blocking"


@dataclass(frozen=True)
class Policy:
    """What fails: the severity cut-off, and whether findings with no fixed release fail too."""

    fail_on: str = FAIL_ON
    fail_on_unfixed: bool = False


def _id_order(advisory_id: str) -> tuple[int, str]:
    # CVE ids first (what people search for), then GitHub's, then the rest.
    prefix = advisory_id.split("-", 1)[0].upper()
    return ({"CVE": 0, "GHSA": 1}.get(prefix, 2), advisory_id)


def advisory_ids(primary: str, aliases: Iterable[str]) -> tuple[str, ...]:
    """An advisory's ids without repeats, CVE first."""
    return tuple(sorted(dict.fromkeys([primary, *aliases]), key=_id_order))


def _expiry(value: object, where: str, today: datetime.date) -> datetime.date:
    if isinstance(value, datetime.datetime):
        value = value.date()
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = datetime.date.fromisoformat(value)
    if not isinstance(value, datetime.date):
        raise UserError(f"{where}: 'expires' must be a date like 2027-01-31, got {value!r}")
    latest = today + datetime.timedelta(days=MAX_IGNORE_DAYS)
    if value > latest:
        raise UserError(
            f"{where}: 'expires' is {value}, more than {MAX_IGNORE_DAYS} days away; "
            f"choose a date on or before {latest} and look at the advisory again then"
        )
    return value


def _entry(raw: object, where: str, today: datetime.date) -> IgnoreEntry:
    if not isinstance(raw, dict):
        raise UserError(f"{where}: must be a mapping with id, package, reason and expires")
    unknown = sorted(set(raw) - IGNORE_KEYS)
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}")
    missing = [key for key in ("id", "package", "reason", "expires") if key not in raw]
    if missing:
        raise UserError(f"{where}: missing {', '.join(missing)}")
    aliases = raw.get("aliases", [])
    if not isinstance(aliases, list):
        raise UserError(f"{where}: 'aliases' must be a list of advisory ids")
    ids = [raw["id"], *aliases]
    for advisory_id in ids:
        if not isinstance(advisory_id, str) or not ADVISORY_ID.match(advisory_id):
            raise UserError(
                f"{where}: {advisory_id!r} is not an advisory id (CVE-..., GHSA-..., PYSEC-...)"
            )
    package = raw["package"]
    if not isinstance(package, str) or not package.strip():
        raise UserError(f"{where}: 'package' must name the affected package")
    reason = raw["reason"]
    if not isinstance(reason, str) or len(reason.strip()) < MIN_REASON_CHARS:
        raise UserError(
            f"{where}: 'reason' must say why the advisory is accepted "
            f"(at least {MIN_REASON_CHARS} characters)"
        )
    expires = _expiry(raw["expires"], where, today)
    return IgnoreEntry(frozenset(ids), package.strip(), " ".join(reason.split()), expires)


def parse_ignore(text: str, path: Path, today: datetime.date) -> list[IgnoreEntry]:
    """The entries of an ignore file's text, each checked; a bad one raises naming its place."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise UserError(f"{path} is not valid YAML: {' '.join(str(error).split())}") from None
    if document is None:
        document = {"ignore": []}
    if not isinstance(document, dict) or set(document) != {"ignore"}:
        raise UserError(f"{path}: must be a mapping with one key, 'ignore' (a list of entries)")
    raw_entries = document["ignore"] or []
    if not isinstance(raw_entries, list):
        raise UserError(f"{path}: 'ignore' must be a list of entries")
    entries = [
        _entry(raw, f"{path}, entry {number}", today)
        for number, raw in enumerate(raw_entries, start=1)
    ]
    seen: dict[tuple[str, str], int] = {}
    for number, entry in enumerate(entries, start=1):
        for advisory_id in entry.ids:
            key = (advisory_id, canonical(entry.package))
            if key in seen:
                raise UserError(
                    f"{path}, entry {number}: {advisory_id} for {entry.package} "
                    f"is already entry {seen[key]}"
                )
            seen[key] = number
    return entries


def load_ignore(path: Path, today: datetime.date) -> list[IgnoreEntry]:
    """The checked entries of the ignore file at `path` (none when it does not exist)."""
    if not path.exists():
        log.warning("%s does not exist: no advisory is accepted", path)
        return []
    return parse_ignore(path.read_text(encoding="utf-8"), path, today)


def rank(severity: str) -> int:
    """Position on the severity scale; an unknown severity ranks with the highest."""
    return SEVERITIES.index(severity) if severity in SEVERITIES else len(SEVERITIES)


def judge(
    findings: Iterable[Finding],
    entries: Sequence[IgnoreEntry],
    today: datetime.date,
    policy: Policy,
) -> list[Judged]:
    """What the gate makes of each finding, in a stable order (blocking ones first)."""
    judged = []
    for finding in findings:
        covering = [entry for entry in entries if entry.covers(finding)]
        active = [entry for entry in covering if entry.expires >= today]
        expired = [entry for entry in covering if entry.expires < today]
        at_or_above = rank(finding.severity) >= rank(policy.fail_on)
        if active:
            entry = active[0]
            judged.append(Judged(finding, "ignored", f"until {entry.expires}: {entry.reason}"))
        elif at_or_above and (finding.has_fix or policy.fail_on_unfixed):
            note = f"its entry expired on {expired[0].expires}" if expired else ""
            judged.append(Judged(finding, "blocking", note))
        elif at_or_above:
            judged.append(Judged(finding, "no fix", "no fixed release yet"))
        else:
            judged.append(Judged(finding, "below"))
    order = {"blocking": 0, "no fix": 1, "ignored": 2, "below": 3}
    return sorted(
        judged,
        key=lambda j: (order[j.status], -rank(j.finding.severity), canonical(j.finding.package)),
    )


def expired_entries(entries: Sequence[IgnoreEntry], today: datetime.date) -> list[IgnoreEntry]:
    """Entries whose expiry date has passed: they hide nothing any more."""
    return [entry for entry in entries if entry.expires < today]


# --- OSV and pip-audit (the lock files) ---------------------------------------------------------


def osv_severity(record: dict[str, Any]) -> str | None:
    """An OSV record's severity: GitHub's rating when it has one, else its CVSS vectors' highest."""
    rating = (record.get("database_specific") or {}).get("severity")
    if isinstance(rating, str) and rating.lower() in SEVERITY_NAMES:
        return SEVERITY_NAMES[rating.lower()]
    from cvss import CVSS2, CVSS3, CVSS4, CVSSError

    found = []
    for entry in record.get("severity") or []:
        kind, vector = entry.get("type"), entry.get("score", "")
        try:
            if kind == "CVSS_V4":
                name = CVSS4(vector).severity
            elif kind == "CVSS_V3":
                name = CVSS3(vector).severities()[0]
            elif kind == "CVSS_V2":
                name = CVSS2(vector).severities()[0]
            else:
                continue
        except (CVSSError, ValueError, KeyError, IndexError):
            log.debug("unreadable %s vector %r in %s", kind, vector, record.get("id"))
            continue
        found.append(SEVERITY_NAMES.get(str(name).lower(), UNKNOWN))
    return max(found, key=rank) if found else None


class Osv:
    """OSV's REST API: one advisory record by id (cached), and the query URL for pip-audit."""

    def __init__(self, api: str = OSV_API, timeout_s: float = OSV_TIMEOUT_S) -> None:
        self.api = api.rstrip("/")
        self.timeout_s = timeout_s
        self._records: dict[str, dict[str, Any] | None] = {}

    @property
    def query_url(self) -> str:
        return f"{self.api}/query"

    def record(self, advisory_id: str) -> dict[str, Any] | None:
        """The advisory's record, or None when OSV has none under this id."""
        if advisory_id not in self._records:
            url = f"{self.api}/vulns/{urllib.parse.quote(advisory_id)}"
            try:
                with urllib.request.urlopen(url, timeout=self.timeout_s) as response:
                    self._records[advisory_id] = json.load(response)
            except urllib.error.HTTPError as error:
                if error.code != 404:
                    raise UserError(
                        f"OSV answered {error.code} for {advisory_id} ({url})"
                    ) from None
                self._records[advisory_id] = None
            except (urllib.error.URLError, TimeoutError, json.JSONDecodeError) as error:
                reason = getattr(error, "reason", error)
                raise UserError(f"OSV could not be read at {url}: {reason}") from None
        return self._records[advisory_id]

    def severity(self, ids: Sequence[str]) -> str:
        """The severity of the first of the finding's records that rates it (GitHub's first)."""
        ordered = sorted(ids, key=lambda i: (not i.startswith("GHSA-"), i.startswith("CVE-"), i))
        for advisory_id in ordered:
            record = self.record(advisory_id)
            severity = osv_severity(record) if record else None
            if severity:
                return severity
        return UNKNOWN


def run_pip_audit(lock: Path, osv: Osv) -> dict[str, Any]:
    """pip-audit's JSON report of `lock`: every pinned requirement looked up in OSV."""
    if not lock.is_file():
        raise UserError(f"{lock} does not exist")
    command = [
        sys.executable,
        "-m",
        "pip_audit",
        "--requirement",
        str(lock),
        # A lock file pins everything: audit it as written, without resolving or installing.
        "--no-deps",
        "--disable-pip",
        "--vulnerability-service",
        "osv",
        "--osv-url",
        osv.query_url,
        "--format",
        "json",
        "--progress-spinner",
        "off",
        "--timeout",
        str(int(osv.timeout_s)),
    ]
    log.info("pip-audit %s (OSV at %s)", lock, osv.api)
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=PIP_AUDIT_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        raise UserError(f"pip-audit did not finish {lock} in {PIP_AUDIT_TIMEOUT_S} s") from None
    # pip-audit exits 1 when it found something; its report is on stdout either way.
    if done.returncode in (0, 1) and done.stdout.strip():
        try:
            return json.loads(done.stdout)
        except json.JSONDecodeError:
            pass
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    raise UserError(
        f"pip-audit could not audit {lock}: {lines[-1] if lines else f'exit {done.returncode}'}"
    )


def lock_findings(
    report: dict[str, Any], source: str, severity: Callable[[Sequence[str]], str]
) -> tuple[int, list[Finding]]:
    """The number of packages audited and the findings in a pip-audit JSON report."""
    findings = []
    dependencies = report.get("dependencies", [])
    for dependency in dependencies:
        if "skip_reason" in dependency:
            log.warning(
                "%s: %s not audited: %s", source, dependency["name"], dependency["skip_reason"]
            )
        for vuln in dependency.get("vulns", []):
            ids = advisory_ids(vuln["id"], vuln.get("aliases", []))
            findings.append(
                Finding(
                    package=dependency["name"],
                    version=dependency["version"],
                    ids=ids,
                    severity=severity(ids),
                    fixed_in=tuple(vuln.get("fix_versions", [])),
                )
            )
    return len(dependencies), findings


# --- Grype (the image) ---------------------------------------------------------------------------


def image_findings(report: dict[str, Any]) -> tuple[str, int, list[Finding]]:
    """The scanned image's name, its number of matches, and its findings, from Grype's JSON."""
    if not isinstance(report, dict) or not isinstance(report.get("matches"), list):
        raise UserError("the image scan report is not Grype's JSON (no 'matches' list)")
    target = (report.get("source") or {}).get("target") or {}
    name = target.get("userInput") if isinstance(target, dict) else None
    findings: dict[tuple[str, str, str], Finding] = {}
    for number, match in enumerate(report["matches"], start=1):
        try:
            vulnerability, artifact = match["vulnerability"], match["artifact"]
            related = [item["id"] for item in match.get("relatedVulnerabilities") or []]
            fix = vulnerability.get("fix") or {}
            severity = str(vulnerability.get("severity", "")).lower()
            finding = Finding(
                package=artifact["name"],
                version=artifact["version"],
                ids=advisory_ids(vulnerability["id"], related),
                severity=SEVERITY_NAMES.get(severity, UNKNOWN),
                fixed_in=tuple(fix.get("versions") or []) if fix.get("state") == "fixed" else (),
            )
        except (KeyError, TypeError, AttributeError) as error:
            raise UserError(
                f"the image scan report's match {number} is not Grype's: {error!r}"
            ) from None
        # The same package can be matched at several paths: one finding each.
        findings.setdefault(
            (canonical(finding.package), finding.version, vulnerability["id"]), finding
        )
    return name or "image", len(report["matches"]), list(findings.values())


# --- reports --------------------------------------------------------------------------------------


def render_text(judged: Sequence[Judged]) -> list[str]:
    """One line per finding that is not below the cut-off."""
    lines = []
    for item in judged:
        if item.status == "below":
            continue
        finding = item.finding
        fixed = f"fixed in {', '.join(finding.fixed_in)}" if finding.fixed_in else "no fix"
        note = f": {_shortened(item.note)}" if item.note else ""
        lines.append(
            f"  {item.status.upper() if item.blocking else item.status:<9} {finding.package} "
            f"{finding.version}  {finding.advisory}  {finding.severity}, {fixed}{note}"
        )
    return lines


def _shortened(text: str, limit: int = 90) -> str:
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _counted(count: int) -> str:
    return f"{count} known vulnerabilit{'y' if count == 1 else 'ies'}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(
    title: str, sources: Sequence[str], judged: Sequence[Judged], policy: Policy, ignore: Path
) -> str:
    """The job summary: the gate, then a table of every finding at or above the cut-off."""
    shown = [item for item in judged if item.status != "below"]
    below = len(judged) - len(shown)
    blocking = sum(item.blocking for item in judged)
    verdict = "failed" if blocking else "passed"
    fail_rule = (
        "with or without a fixed release" if policy.fail_on_unfixed else "with a fixed release"
    )
    lines = [
        f"### {title}: {verdict}",
        "",
        f"Scanned: {', '.join(f'`{source}`' for source in sources)}. Fails on a finding at or "
        f"above **{policy.fail_on}**, {fail_rule}, that `{ignore}` does not accept.",
        "",
    ]
    if shown:
        lines += [
            "| status | package | version | advisory | severity | fixed in | note |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {item.status} | {_cell(item.finding.package)} | {_cell(item.finding.version)} "
            f"| {_cell(item.finding.advisory)} | {item.finding.severity} "
            f"| {_cell(', '.join(item.finding.fixed_in) or '-')} | {_cell(item.note)} |"
            for item in shown
        ]
    else:
        lines.append(f"Nothing at or above {policy.fail_on}.")
    if below:
        lines += ["", f"{below} finding(s) below {policy.fail_on} are not listed."]
    return "\n".join(lines) + "\n"


def _conclude(
    title: str,
    sources: Sequence[str],
    judged: Sequence[Judged],
    expired: Sequence[IgnoreEntry],
    policy: Policy,
    args: argparse.Namespace,
) -> int:
    for entry in expired:
        print(
            f"warning: {args.ignore_file}: {entry.label} expired on {entry.expires} and hides "
            "nothing now; upgrade, or renew it with a new reason and date",
            file=sys.stderr,
        )
    if args.summary:
        try:
            with open(args.summary, "a", encoding="utf-8") as summary:
                summary.write(render_markdown(title, sources, judged, policy, args.ignore_file))
        except OSError as error:
            raise UserError(
                f"cannot write the summary to {args.summary}: {error.strerror}"
            ) from None
    blocking = sum(item.blocking for item in judged)
    if blocking:
        print(
            f"FAILED: {blocking} finding(s) at or above {policy.fail_on} with "
            f"{'or without a fix' if policy.fail_on_unfixed else 'a fix'} are not accepted in "
            f"{args.ignore_file}: upgrade the package, or add the advisory there with a reason "
            "and an expiry date",
            file=sys.stderr,
        )
        return 1
    print(f"passed: nothing at or above {policy.fail_on} outside {args.ignore_file} needs a fix")
    return 0


# Each target yields, per scanned source: its name, a heading line, and its findings.
Scanned = Iterator[tuple[str, str, list[Finding]]]


def scan_locks(args: argparse.Namespace) -> Scanned:
    osv = Osv(args.osv_api)
    for lock in args.locks:
        count, findings = lock_findings(run_pip_audit(lock, osv), str(lock), osv.severity)
        yield str(lock), f"{lock}: {count} packages, {_counted(len(findings))}", findings


def scan_image(args: argparse.Namespace) -> Scanned:
    try:
        report = json.loads(Path(args.report).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{args.report} does not exist: run the image scan first") from None
    except json.JSONDecodeError as error:
        raise UserError(f"{args.report} is not JSON: {error}") from None
    name, matches, findings = image_findings(report)
    yield name, f"{name}: {matches} matches, {_counted(len(findings))}", findings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    targets = parser.add_subparsers(dest="target", required=True, metavar="TARGET")
    locks = targets.add_parser("locks", help="audit lock files with pip-audit and OSV")
    locks.add_argument("locks", nargs="*", type=Path, default=list(LOCK_FILES), metavar="LOCK")
    locks.add_argument("--osv-api", default=OSV_API, help=f"OSV's API (default: {OSV_API})")
    locks.set_defaults(scan=scan_locks, title="Lock file audit")
    image = targets.add_parser("image", help="judge a Grype JSON report of the image")
    image.add_argument("report", type=Path, help="Grype's JSON report (anchore/scan-action)")
    image.set_defaults(scan=scan_image, title="Image scan")
    for target in (locks, image):
        target.add_argument("--ignore-file", type=Path, default=IGNORE_FILE)
        target.add_argument("--fail-on", choices=SEVERITIES, default=FAIL_ON)
        target.add_argument(
            "--fail-on-unfixed",
            action="store_true",
            help="fail on findings at or above the cut-off that have no fixed release too",
        )
        target.add_argument("--summary", type=Path, help="append a markdown summary to this file")


def run(args: argparse.Namespace) -> int:
    today = datetime.datetime.now(datetime.UTC).date()
    entries = load_ignore(args.ignore_file, today)
    policy = Policy(args.fail_on, args.fail_on_unfixed)
    sources, judged_all = [], []
    for source, heading, findings in args.scan(args):
        judged = judge(findings, entries, today, policy)
        print(heading)
        for line in render_text(judged):
            print(line)
        sources.append(source)
        judged_all += judged
    expired = expired_entries(entries, today)
    return _conclude(args.title, sources, judged_all, expired, policy, args)
