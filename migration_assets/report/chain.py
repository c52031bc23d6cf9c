"""The report chain: JSON (the record) and Markdown (for people), keyed and numbered.

Each report carries an HMAC-SHA256 of its own canonical JSON under the report key, the
digest of the report before it in the same directory, and the SHA-256 of its Markdown.
A plain hash would let whoever can write the directory rewrite every report and re-hash
the lot; the keyed digest needs the secret the runs use (`report_key`). Changing any
report, or its Markdown, or removing one from the middle, breaks the chain. Removing the
newest one leaves an intact chain, so every report's sequence and digest are also
recorded outside the directory (anchors: the target and the Dagster instance), and
`compare_anchor` holds the directory against them. No patient data: only counts,
checksums, keys of differing rows, check results, masked configuration.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from migration_assets.private import private_dir, write_private
from migration_assets.report.markdown import FOOTER, render_markdown

REPORT_FORMAT = 2  # 2: keyed digests, a chain id, anchors (1 was a plain SHA-256)
NAME = re.compile(r"^audit-(\d{4,})\.json$")
DIGEST_PREFIX = "hmac-sha256:"
# The report key is derived from the keyed-hash secret, never that secret itself: the two
# uses (labels of natural keys, the report chain) then never share a key.
KEY_CONTEXT = b"audit-report-chain"


def report_key(secret: bytes) -> bytes:
    """The key of the chain's digests: HMAC(secret, "audit-report-chain")."""
    return hmac.new(secret, KEY_CONTEXT, hashlib.sha256).digest()


def canonical(data: dict[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def digest_of(report: dict[str, Any], key: bytes) -> str:
    body = {k: v for k, v in report.items() if k != "digest"}
    return DIGEST_PREFIX + hmac.new(key, canonical(body), hashlib.sha256).hexdigest()


def _reports(directory: Path) -> list[tuple[int, Path]]:
    found = []
    for path in directory.glob("audit-*.json"):
        match = NAME.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


@dataclass(frozen=True)
class PreparedReport:
    """The next report of a directory's chain, numbered, chained and digested, not yet
    written: its anchor can be recorded first, in a transaction committed after the files."""

    directory: Path
    report: dict[str, Any]
    markdown: str

    @property
    def sequence(self) -> int:
        return int(self.report["sequence"])

    @property
    def chain(self) -> str:
        return str(self.report["chain"])

    @property
    def digest(self) -> str:
        return str(self.report["digest"])

    @property
    def paths(self) -> tuple[Path, Path]:
        stem = self.directory / f"audit-{self.sequence:04d}"
        return stem.with_suffix(".json"), stem.with_suffix(".md")

    def write(self) -> tuple[Path, Path]:
        """Both files, 0600, in a 0700 directory."""
        private_dir(self.directory)
        json_path, md_path = self.paths
        text = json.dumps(self.report, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        write_private(json_path, text)
        write_private(md_path, self.markdown + FOOTER + f"`{self.digest}`\n")
        return json_path, md_path


def prepare_report(report: dict[str, Any], directory: Path, key: bytes) -> PreparedReport:
    """Number the report after the directory's last one, chain it to it (its chain id and
    digest), render the Markdown, digest the whole under `key`."""
    existing = _reports(directory) if directory.is_dir() else []
    previous = json.loads(existing[-1][1].read_text()) if existing else None
    report = dict(report)
    report["format"] = REPORT_FORMAT
    report["sequence"] = existing[-1][0] + 1 if existing else 1
    report["chain"] = (previous or {}).get("chain") or secrets.token_hex(16)
    report["previous_digest"] = previous["digest"] if previous else None
    markdown = render_markdown(report)
    report["markdown_sha256"] = hashlib.sha256(markdown.encode()).hexdigest()
    report["digest"] = digest_of(report, key)
    return PreparedReport(directory, report, markdown)


@dataclass
class ChainCheck:
    """What a directory holds (sequence -> digest, its chain id) and what is wrong with it."""

    directory: Path
    digests: dict[int, str] = field(default_factory=dict)
    chains: set[str] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)

    @property
    def chain(self) -> str | None:
        return next(iter(self.chains)) if len(self.chains) == 1 else None

    @property
    def newest(self) -> int:
        return max(self.digests, default=0)


def check_chain(directory: Path, key: bytes) -> ChainCheck:
    """Every way the reports in `directory` fail to be an untouched, unbroken chain
    authenticated by `key` (a deleted newest report needs an anchor: `compare_anchor`)."""
    found = ChainCheck(directory)
    reports = _reports(directory) if directory.is_dir() else []
    if not reports:
        found.problems.append(f"no audit-NNNN.json reports in {directory}")
        return found
    previous_digest: str | None = None
    for expected, (number, path) in enumerate(reports, start=1):
        if number != expected:
            found.problems.append(f"{path.name}: expected report number {expected}: one is missing")
        try:
            report = json.loads(path.read_text())
        except json.JSONDecodeError:
            found.problems.append(f"{path.name}: not valid JSON")
            previous_digest = None
            continue
        if not isinstance(report, dict):
            found.problems.append(f"{path.name}: not a report")
            previous_digest = None
            continue
        found.problems += _report_problems(path, report, key, previous_digest, number)
        found.digests[number] = str(report.get("digest"))
        if report.get("chain"):
            found.chains.add(str(report["chain"]))
        previous_digest = report.get("digest")
    if len(found.chains) > 1:
        found.problems.append(f"the reports name {len(found.chains)} chains: they were mixed")
    return found


def _report_problems(
    path: Path, report: dict[str, Any], key: bytes, previous_digest: str | None, number: int
) -> list[str]:
    problems = []
    if report.get("format") != REPORT_FORMAT:
        problems.append(
            f"{path.name}: report format {report.get('format')!r}, not {REPORT_FORMAT}: "
            "written by another version, without a keyed digest this version can check"
        )
    elif not _same(str(report.get("digest")), digest_of(report, key)):
        problems.append(
            f"{path.name}: content does not match its keyed digest (altered, re-hashed "
            "without the key, or written under another secret)"
        )
    if report.get("sequence") != number:
        problems.append(f"{path.name}: says it is report #{report.get('sequence')}")
    if report.get("previous_digest") != previous_digest:
        problems.append(f"{path.name}: does not chain to the report before it")
    md_path = path.with_suffix(".md")
    if not md_path.exists():
        problems.append(f"{md_path.name}: missing")
    else:
        body = md_path.read_text().rsplit(FOOTER, 1)[0]
        if hashlib.sha256(body.encode()).hexdigest() != report.get("markdown_sha256"):
            problems.append(f"{md_path.name}: does not match its report (altered)")
    return problems


def compare_anchor(found: ChainCheck, where: str, anchored: Iterable[tuple[int, str]]) -> list[str]:
    """How the directory disagrees with one anchor's (sequence, digest) records of its chain:
    a report anchored but gone (the newest deleted), anchored with another digest (rewritten,
    even by someone holding the key), or newer than anything anchored."""
    records = sorted(set(anchored))
    if not records:
        return [f"{where} holds no anchor of this chain: a report of it was never recorded there"]
    problems = []
    for sequence, digest in records:
        held = found.digests.get(sequence)
        if held is None and sequence > found.newest:
            problems.append(
                f"{where} anchors report #{sequence} ({digest}), newer than the directory's "
                f"newest (#{found.newest}): it was deleted"
            )
        elif held is not None and not _same(held, digest):
            problems.append(
                f"{where} anchors report #{sequence} with digest {digest}, the directory's "
                f"has {held}: it was replaced"
            )
    newest = records[-1][0]
    if found.newest > newest:
        problems.append(
            f"report #{found.newest} is newer than anything {where} anchors (#{newest}): it "
            "was not anchored when written (see the report asset's metadata `target_anchor`) "
            "or was added afterwards"
        )
    return problems


def _same(a: str, b: str) -> bool:
    """Digests compared in constant time; as bytes, since a forged one may be any text."""
    return hmac.compare_digest(a.encode(), b.encode())
