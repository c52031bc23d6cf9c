"""The report as people read it: Markdown rendered from the JSON record."""

from __future__ import annotations

from typing import Any

FOOTER = "\n\n---\ndigest "


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
        f"- report #{report['sequence']} of chain {report['chain']}, previous digest: "
        f"{report['previous_digest'] or 'none'}; anchored: "
        + ("; ".join(report.get("anchors") or []) or "none"),
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
    lines += _recompute(report["tables"])
    lines += ["", "## Configuration (secrets masked)", ""]
    lines += [f"- {k}: {v or '(unset)'}" for k, v in sorted(report["configuration"].items())]
    return "\n".join(lines)


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
