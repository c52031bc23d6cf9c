"""The audit report as files: JSON (the record), Markdown (for people), a digest chain.

Each report carries the SHA-256 of its own canonical JSON and the digest of the report
before it in the same directory, and the digest of its Markdown rendering. Changing any
old report, or its Markdown, or removing one from the middle, breaks the chain, which
`migration-assets report --check DIR` detects. No patient data: only counts, checksums,
keys of differing rows, check results, masked configuration.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

REPORT_FORMAT = 1
NAME = re.compile(r"^audit-(\d{4,})\.json$")


def canonical(data: dict[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def digest_of(report: dict[str, Any]) -> str:
    body = {k: v for k, v in report.items() if k != "digest"}
    return "sha256:" + hashlib.sha256(canonical(body)).hexdigest()


def _reports(directory: Path) -> list[tuple[int, Path]]:
    found = []
    for path in directory.glob("audit-*.json"):
        match = NAME.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def write_report(report: dict[str, Any], directory: Path) -> tuple[Path, Path]:
    """Number the report after the last one, chain it to it, write JSON and Markdown."""
    directory.mkdir(parents=True, exist_ok=True)
    existing = _reports(directory)
    previous = json.loads(existing[-1][1].read_text()) if existing else None
    number = existing[-1][0] + 1 if existing else 1
    report = dict(report)
    report["format"] = REPORT_FORMAT
    report["sequence"] = number
    report["previous_digest"] = previous["digest"] if previous else None
    markdown = render_markdown(report)
    report["markdown_sha256"] = hashlib.sha256(markdown.encode()).hexdigest()
    report["digest"] = digest_of(report)
    stem = directory / f"audit-{number:04d}"
    json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    json_path.write_text(json.dumps(report, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    md_path.write_text(markdown + f"\n\n---\ndigest `{report['digest']}`\n")
    return json_path, md_path


def check_chain(directory: Path) -> list[str]:
    """Every way the reports in `directory` fail to be an untouched, unbroken chain."""
    problems: list[str] = []
    reports = _reports(directory)
    if not reports:
        return [f"no audit-NNNN.json reports in {directory}"]
    previous_digest: str | None = None
    for expected, (number, path) in enumerate(reports, start=1):
        if number != expected:
            problems.append(f"{path.name}: expected report number {expected}: one is missing")
        try:
            report = json.loads(path.read_text())
        except json.JSONDecodeError:
            problems.append(f"{path.name}: not valid JSON")
            previous_digest = None
            continue
        if report.get("digest") != digest_of(report):
            problems.append(f"{path.name}: content does not match its digest (altered)")
        if report.get("previous_digest") != previous_digest:
            problems.append(f"{path.name}: does not chain to the report before it")
        md_path = path.with_suffix(".md")
        if not md_path.exists():
            problems.append(f"{md_path.name}: missing")
        else:
            body = md_path.read_text().rsplit("\n\n---\ndigest ", 1)[0]
            if hashlib.sha256(body.encode()).hexdigest() != report.get("markdown_sha256"):
                problems.append(f"{md_path.name}: does not match its report (altered)")
        previous_digest = report.get("digest")
    return problems


def _mark(passed: bool | None, severity: str = "ERROR") -> str:
    """A failed WARN-severity check is advisory: it never reads as a FAIL."""
    if passed is False and severity == "WARN":
        return "WARN"
    return {True: "PASS", False: "FAIL", None: "not run"}[passed]


def _statistics(stats: dict[str, Any]) -> str:
    if stats.get("tables_analyzed") is None:
        return "not refreshed by this tool (autovacuum's timing)"
    return f"ANALYZE of {stats['tables_analyzed']} table(s) after the load, at {stats['at']}"


def render_markdown(report: dict[str, Any]) -> str:
    verdict = report["verdict"]
    lines = [
        "# Migration audit report",
        "",
        f"- generated: {report['generated_at']} by {report['generated_by']['os_user']}@"
        f"{report['generated_by']['host']} with migration_assets "
        f"{report['generated_by']['version']} (dagster {report['generated_by']['dagster']})",
        f"- report #{report['sequence']}, previous digest: {report['previous_digest'] or 'none'}",
        f"- plan: {report['plan']['path']} (sha256 {report['plan']['sha256'][:16]}…), "
        f"{report['plan']['tables']} tables, {report['plan']['partitions']} partitions",
        f"- alembic revision: source {report['alembic']['source']}, "
        f"target {report['alembic']['target']}",
        f"- TLS to the target: {report['tls']['summary']}",
        f"- planner statistics: {_statistics(report.get('statistics') or {})}",
        "",
        f"## Verdict: {'COMPLETE' if verdict['complete'] else 'INCOMPLETE'}",
        "",
    ]
    lines += ["- " + p.replace("\n", "\n  ") for p in verdict["problems"]] or [
        "- every table and check verified"
    ]
    lines += [
        "",
        "## Tables",
        "",
        "| table | partitions verified | rows | checks |",
        "|---|---|---|---|",
    ]
    for table in report["tables"]:
        checks = ", ".join(
            f"{c['name']} {_mark(c['passed'], c.get('severity', 'ERROR'))}" for c in table["checks"]
        )
        parts = table["partitions"]
        lines.append(
            f"| {table['table']} | {parts['verified']}/{parts['total']} | "
            f"{table['rows_verified']:,} | {checks or 'none run'} |"
        )
    not_copied = report["plan"].get("not_copied") or {}
    if not_copied:
        lines += ["", "## Not copied (the plan says why)", ""]
        lines += [f"- {name}: {why}" for name, why in not_copied.items()]
    lines += ["", "## Global checks", ""]
    for check in report["global_checks"]:
        lines.append(
            f"- {check['asset']} {check['name']}: "
            f"{_mark(check['passed'], check.get('severity', 'ERROR'))} "
            f"({check.get('at') or 'never'}, run {check.get('run_id') or '-'})"
        )
    cutover = report.get("cutover")
    if cutover:
        lines += ["", f"## Cutover: {cutover.get('state')}", ""]
        lines += [f"- {k}: {v}" for k, v in cutover.items() if k != "state"]
    lines += ["", "## Configuration (secrets masked)", ""]
    lines += [f"- {k}: {v or '(unset)'}" for k, v in sorted(report["configuration"].items())]
    return "\n".join(lines)
