"""What keeps a report from COMPLETE: every problem, and the same grouped for people.

Right after `migrate` a report lists every whole-table check of every table as not run
since its asset changed: seventy lines that all say "run verify". People need the group
and the one command that clears it; the JSON keeps every line (`verdict.problems`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FAILED, PARTITIONS, STALE, NEVER = "failed", "partitions", "stale", "never_ran"
_WHY = ("details", "orphans", "behind", "error", "fix")


@dataclass(frozen=True)
class Problem:
    kind: str
    subject: str  # a table (schema.table) or a global asset
    text: str
    table: bool = True
    units: int = 1  # checks, or partitions not verified


def problems(
    tables: list[dict[str, Any]],
    global_checks: list[dict[str, Any]],
    ignore: frozenset[str] = frozenset(),
) -> list[Problem]:
    found = []
    for table in tables:
        parts, name = table["partitions"], table["table"]
        if parts["verified"] < parts["total"]:
            missing = parts["total"] - parts["verified"]
            text = f"{name}: {missing} of {parts['total']} partitions not verified"
            found.append(Problem(PARTITIONS, name, text, units=missing))
        for check in table["checks"]:
            if check["passed"] is not True and check["name"] not in ignore:
                text = f"{name}: check {check['name']} {_state(check)}"
                found.append(Problem(_kind(check), name, text))
    for check in global_checks:
        if check["passed"] is not True and check.get("severity", "ERROR") == "ERROR":
            text = f"{check['asset']}: check {check['name']} {_state(check)}"
            found.append(Problem(_kind(check), check["asset"], text, table=False))
    return found


def unverified(report: dict[str, Any], *, ignore: frozenset[str] = frozenset()) -> list[str]:
    """The report's problems, leaving out the checks named in `ignore` (the cutover re-runs
    the whole-table comparisons after the freeze, which a live application fails before)."""
    return [p.text for p in problems(report["tables"], report["global_checks"], ignore)]


def _kind(check: dict[str, Any]) -> str:
    if check["passed"] is None:
        return STALE if check.get("stale") else NEVER
    return FAILED


def _state(check: dict[str, Any]) -> str:
    """'never ran', or 'failed' with what the check itself said (the CLI shows the same)."""
    if check["passed"] is None:
        return "not run since its asset last changed" if check.get("stale") else "never ran"
    metadata = check.get("metadata", {})
    said = next((str(metadata[k]) for k in _WHY if metadata.get(k) not in (None, "", "none")), "")
    return f"failed: {said}" if said else "failed"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _where(group: list[Problem]) -> str:
    tables = sorted({p.subject for p in group if p.table})
    others = sorted({p.subject for p in group if not p.table})
    parts = ([_plural(len(tables), "table")] if tables else []) + others
    return ", ".join(parts)


def findings(found: list[Problem], report_command: str) -> list[dict[str, Any]]:
    """The problems grouped by kind, most serious first, each with what clears it."""
    then = f"then `{report_command}`"
    fixes = {
        FAILED: (
            "{n} failed ({where})",
            f"each says why below; once it is fixed, `migration-assets verify`, {then}",
        ),
        PARTITIONS: (
            "{n} not verified ({where})",
            "run `migration-assets migrate` (redoes only those), `migration-assets verify`, "
            + then,
        ),
        STALE: (
            "{n} not run since their asset last changed ({where})",
            f"run `migration-assets verify`, {then}",
        ),
        NEVER: ("{n} never ran ({where})", f"run `migration-assets verify`, {then}"),
    }
    groups = []
    for kind, (summary, fix) in fixes.items():
        group = [p for p in found if p.kind == kind]
        if not group:
            continue
        units = sum(p.units for p in group)
        count = _plural(units, "partition" if kind == PARTITIONS else "check")
        groups.append(
            {
                "kind": kind,
                "summary": summary.format(n=count, where=_where(group)),
                "fix": fix,
                "count": units,
                "tables": sorted({p.subject for p in group}),
                "details": [p.text for p in group] if kind in (FAILED, PARTITIONS) else [],
            }
        )
    return groups
