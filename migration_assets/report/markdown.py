"""The report as a compliance officer reads it: one first page, then the details.

The first page answers what an auditor asks first: is it complete (and if not, why, in one
line), what was moved and what was not, when, by whom, between which servers, over what
encryption, and where this report sits in its chain. Repeated problems are grouped, each
group with the one command that clears it; every single problem stays in the JSON.
"""

from __future__ import annotations

from typing import Any

FOOTER = "\n\n---\ndigest "
NOT_RECORDED = "not recorded"


def _mark(passed: bool | None, severity: str = "ERROR") -> str:
    """A failed WARN-severity check is advisory: it never reads as a FAIL."""
    if passed is False and severity == "WARN":
        return "WARN"
    return {True: "PASS", False: "FAIL", None: "not run"}[passed]


def _statistics(stats: dict[str, Any]) -> str:
    if stats.get("tables_analyzed") is None:
        return "not refreshed by this tool (autovacuum's timing)"
    return f"ANALYZE of {stats['tables_analyzed']} table(s) after the load, at {stats['at']}"


def verdict_line(report: dict[str, Any]) -> str:
    """COMPLETE or INCOMPLETE, and why, in one line."""
    findings = report.get("findings") or []
    if report["verdict"]["complete"]:
        return "COMPLETE: every partition and every check verified"
    why = "; ".join(f["summary"] for f in findings) or "; ".join(report["verdict"]["problems"])
    return f"INCOMPLETE: {why}"


def render_markdown(report: dict[str, Any], *, details: bool = True) -> str:
    """The whole report, or its first page only (`details=False`: for the UI's metadata)."""
    lines = _first_page(report)
    if details:
        lines += ["", "---", "", "# Details", "", *_details(report)]
    return "\n".join(lines)


def _first_page(report: dict[str, Any]) -> list[str]:
    verdict = report["verdict"]
    lines = [
        f"# Migration audit report #{report['sequence']}",
        "",
        f"## Verdict: {'COMPLETE' if verdict['complete'] else 'INCOMPLETE'}",
        "",
        verdict_line(report),
        "",
        "| | |",
        "|---|---|",
    ]
    lines += [f"| {name} | {value} |" for name, value in _facts(report)]
    not_copied = report["plan"].get("not_copied") or {}
    if not_copied:
        lines += ["", "### Not copied (the plan says why)", ""]
        lines += [f"- {name}: {why}" for name, why in not_copied.items()]
    findings = report.get("findings") or []
    if findings:
        lines += ["", "### What to do", ""]
        for finding in findings:
            lines += _finding(finding)
    return lines


def _facts(report: dict[str, Any]) -> list[tuple[str, str]]:
    tables, plan, by = report["tables"], report["plan"], report["generated_by"]
    config = report.get("configuration") or {}
    verified = sum(t["partitions"]["verified"] for t in tables)
    rows = sum(int(t["rows_verified"]) for t in tables)
    not_copied = len(plan.get("not_copied") or {})
    return [
        (
            "Scope",
            f"{len(tables)} tables; {rows:,} rows in {verified} of {plan['partitions']} "
            f"partitions verified; {not_copied or 'nothing'} not copied"
            + (" (listed below)" if not_copied else ""),
        ),
        ("Plan", f"{plan['path']} (sha256 {plan['sha256'][:16]}…, written {plan['created_at']})"),
        ("When", report["generated_at"]),
        (
            "By",
            f"{by['os_user']}@{by['host']}, migration_assets {by['version']} "
            f"(dagster {by['dagster']})",
        ),
        ("Source", config.get("SOURCE_DATABASE_URL") or "(unset)"),
        ("Target", config.get("SUPABASE_DB_URL") or "(unset)"),
        ("TLS to the source", _tls(report["tls"].get("source"))),
        ("TLS to the target", report["tls"]["summary"]),
        ("Chain", _chain(report)),
    ]


def _tls(side: dict[str, Any] | None) -> str:
    if not side or not side.get("protocol"):
        return NOT_RECORDED
    if side["protocol"] == "none":
        return "not encrypted"
    return f"{side['protocol']} {side.get('cipher') or ''}".strip()


def _chain(report: dict[str, Any]) -> str:
    anchors = "; ".join(report.get("anchors") or []) or "none"
    return (
        f"report #{report['sequence']} of chain {report['chain']}; previous digest "
        f"{report['previous_digest'] or 'none (first report)'}; anchored: {anchors}"
    )


def _finding(finding: dict[str, Any]) -> list[str]:
    lines = [f"- **{finding['summary']}**: {finding['fix']}"]
    tables = finding.get("tables") or []
    if tables and not finding.get("details"):
        lines.append(f"  - {', '.join(tables)}")
    lines += [f"  - {d}".replace("\n", "\n    ") for d in finding.get("details") or []]
    return lines


def _details(report: dict[str, Any]) -> list[str]:
    lines = [
        f"- alembic revision: source {report['alembic']['source']}, "
        f"target {report['alembic']['target']}",
        f"- planner statistics: {_statistics(report.get('statistics') or {})}",
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
    lines += _recompute(report["tables"])
    lines += ["", "## Configuration (secrets masked)", ""]
    lines += [f"- {k}: {v or '(unset)'}" for k, v in sorted(report["configuration"].items())]
    return lines


RECOMPUTE_INTRO = [
    "## Recomputing every number yourself",
    "",
    "Each table's row count and checksum come from the read-only SQL below, with built-in",
    "PostgreSQL functions only (nothing needs installing). Save a block as a file and run it",
    "with psql on the server it names; it prints `row count|checksum`:",
    "",
    '    psql "$SOURCE_DATABASE_URL" -X -q -A -t -v ON_ERROR_STOP=1 -f public.patients.sql',
    '    PGSSLROOTCERT=prod-ca-2021.crt psql "$SUPABASE_DB_URL" -X -q -A -t '
    "-v ON_ERROR_STOP=1 -f public.patients.sql",
]


def _recompute(tables: list[dict[str, Any]]) -> list[str]:
    lines = ["", *RECOMPUTE_INTRO]
    for table in tables:
        sql = table.get("recompute") or {}
        if not sql:
            continue
        lines += ["", f"### {table['table']}", "", _numbers(table.get("numbers") or {}), ""]
        if sql["source"] == sql["target"]:
            lines += [f"On both servers (`{table['table']}.sql`):", "", "```sql", sql["source"]]
            lines += ["```"]
            continue
        for side in ("source", "target"):
            lines += [f"On the {side} (`{table['table']}.{side}.sql`):", "", "```sql"]
            lines += [sql[side], "```", ""]
    return lines


def _numbers(numbers: dict[str, Any]) -> str:
    if not numbers:
        return "Not yet verified: no numbers to compare with."
    sides = "; ".join(
        f"{side}: {numbers[side]['rows']:,} rows, checksum {numbers[side]['checksum']}"
        for side in ("source", "target")
    )
    return f"{sides} (row hash {numbers['row_hash']}, from {numbers['from']})"
