"""The audit report asset: gathers evidence from the Dagster instance, writes the files.

Everything comes from what Dagster recorded (materializations, check evaluations, their
run ids and timestamps), so the report is only as good as the runs behind it, and says
so: anything not verified is listed as a problem, never left out.
"""

import datetime as dt
import getpass
import hashlib
import platform
import socket
from pathlib import Path
from typing import Any

import dagster as dg
from dagster import AssetExecutionContext, DagsterInstance

from migration_assets import __version__
from migration_assets.defs.anchors import RECORDED, anchored_in, write_anchored
from migration_assets.defs.checks import check_names
from migration_assets.defs.evidence import check_entry, table_entry, verdicts, when
from migration_assets.defs.failures import as_failure
from migration_assets.defs.findings import findings, problems, unverified
from migration_assets.defs.history import plain
from migration_assets.defs.keys import (
    CUTOVER_KEY,
    DATA_API_LOCKED_DOWN,
    INDEXES_KEY,
    INDEXES_MATCH_SOURCE,
    KINDS,
    PLAN_MATCHES_SOURCE,
    POOLER_READY,
    REPORT_COMPLETE,
    REPORT_KEY,
    SCHEMA_KEY,
    SCHEMA_MATCHES_SOURCE,
    SEQUENCES_AHEAD,
    SEQUENCES_KEY,
    TARGET_POOL,
    TLS_IN_USE,
    VERIFY_JOB,
)
from migration_assets.defs.resources import MigrationOptions, TargetDatabase
from migration_assets.plan import MigrationPlan
from migration_assets.report import prepare_report, render_markdown, report_key

__all__ = ["collect_report", "report_dir", "unverified"]

GLOBAL_CHECKS = [
    (SCHEMA_KEY, SCHEMA_MATCHES_SOURCE),
    (SCHEMA_KEY, PLAN_MATCHES_SOURCE),
    (SCHEMA_KEY, DATA_API_LOCKED_DOWN),
    (SCHEMA_KEY, TLS_IN_USE),
    (INDEXES_KEY, INDEXES_MATCH_SOURCE),
    (SEQUENCES_KEY, SEQUENCES_AHEAD),
    (SEQUENCES_KEY, POOLER_READY),
]


class ReportConfig(dg.Config):
    out_dir: str = ""  # default: $DAGSTER_HOME/audit


def _cutover(instance: DagsterInstance) -> dict[str, Any] | None:
    """The last cutover or rollback the cutover jobs recorded (freeze, window, positions)."""
    event = instance.get_latest_materialization_event(CUTOVER_KEY)
    if event is None or event.asset_materialization is None:
        return None
    meta = event.asset_materialization.metadata
    return {"at": when(event.timestamp), "run_id": event.run_id} | {
        k: plain(v) for k, v in meta.items()
    }


def _latest_metadata(instance: DagsterInstance, key: dg.AssetKey) -> dict[str, Any]:
    event = instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        return {}
    return {k: plain(v) for k, v in event.asset_materialization.metadata.items()}


def collect_report(
    instance: DagsterInstance,
    plan: MigrationPlan,
    plan_path: Path,
    settings_shown: dict[str, str],
    out_dir: Path | None = None,
) -> dict[str, Any]:
    """Everything the auditor needs, from the instance; nothing from the patient rows.
    `out_dir`: where the report goes, for the commands that clear its problems."""
    schema_meta = _latest_metadata(instance, SCHEMA_KEY)
    sequences_event = instance.get_latest_materialization_event(SEQUENCES_KEY)
    sequences_meta = _latest_metadata(instance, SEQUENCES_KEY)
    found = verdicts(
        instance,
        [dg.AssetCheckKey(key, name) for key, name in GLOBAL_CHECKS]
        + [
            dg.AssetCheckKey(dg.AssetKey(t.asset_path), name)
            for t in plan.tables
            for name in check_names(t, plan)
        ],
    )
    tables = [table_entry(instance, found, t, plan) for t in plan.tables]
    global_checks = [check_entry(found, key, name) for key, name in GLOBAL_CHECKS]
    unsettled = problems(tables, global_checks)
    again = f"migration-assets report --out {out_dir if out_dir is not None else 'DIR'}"
    return {
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "generated_by": {
            "os_user": getpass.getuser(),
            "host": socket.gethostname(),
            "version": __version__,
            "dagster": dg.__version__,
            "python": platform.python_version(),
        },
        "configuration": dict(settings_shown),  # as the runs had them, masked
        "plan": {
            "path": str(plan_path),
            "sha256": hashlib.sha256(plan_path.read_bytes()).hexdigest(),
            "created_at": plan.created_at,
            "tables": len(plan.tables),
            "partitions": plan.total_partitions(),
            "not_copied": dict(sorted(plan.skipped.items())),  # and why: the plan's decisions
        },
        "alembic": {
            "source": schema_meta.get("source_revision", "unknown"),
            "target": schema_meta.get("target_revision", "unknown"),
            "schema_step": schema_meta.get("how", "never ran"),
        },
        "tls": _tls(next(c for c in global_checks if c["name"] == TLS_IN_USE)),
        "statistics": {
            "tables_analyzed": sequences_meta.get("tables_analyzed"),
            "at": when(sequences_event.timestamp) if sequences_event is not None else None,
            "run_id": sequences_event.run_id if sequences_event is not None else None,
        },
        "tables": tables,
        "global_checks": global_checks,
        "cutover": _cutover(instance),
        "verdict": {"complete": not unsettled, "problems": [p.text for p in unsettled]},
        "findings": findings(unsettled, again),
    }


def _tls(check: dict[str, Any]) -> dict[str, Any]:
    """The target's TLS as `tls_in_use` recorded it, and the source's where it records that
    too (`source_protocol`, `source_cipher`); absent keys stay None: "not recorded"."""
    meta = check.get("metadata", {})
    return {
        "passed": check["passed"],
        "protocol": meta.get("protocol"),
        "cipher": meta.get("cipher"),
        "bits": meta.get("bits"),
        "at": check.get("at"),
        "run_id": check.get("run_id"),
        "summary": (
            f"{meta.get('protocol')} {meta.get('cipher')}"
            if check["passed"]
            else ("not encrypted" if meta.get("ssl") is False else "not verified")
        ),
        "source": {"protocol": meta.get("source_protocol"), "cipher": meta.get("source_cipher")},
    }


def report_dir(config_dir: str, instance: DagsterInstance) -> Path:
    """`out_dir`, else `audit` in the instance's DAGSTER_HOME."""
    return Path(config_dir) if config_dir else Path(instance.root_directory) / "audit"


def build_report_asset(plan: MigrationPlan) -> dg.AssetsDefinition:
    @dg.asset(
        key=REPORT_KEY,
        pool=TARGET_POOL,  # it records the report's anchor on the target
        deps=[SEQUENCES_KEY, SCHEMA_KEY],
        group_name="audit",
        kinds=KINDS,
        # Last among ready steps: in a run that also holds supabase_sequences (a "Materialize
        # all" backfill, migrate's tail), its checks must be recorded before the report reads
        # them; the in-process executor runs ready steps by this priority.
        op_tags={"dagster/priority": "-1"},
        owners=plan.owners,
        description=(
            "The audit report: every table's and partition's last verified counts and "
            "checksums, every check with its run id and time, Alembic revisions, TLS evidence, "
            "who ran it, masked configuration, the SQL that recomputes every number; JSON + "
            "Markdown, chained by keyed digests, each anchored on the target and in this "
            "asset's metadata (chain, sequence, digest). After a UI backfill, the job "
            f"{VERIFY_JOB} runs every whole-table check and then writes this report."
        ),
        check_specs=[
            dg.AssetCheckSpec(
                REPORT_COMPLETE,
                asset=REPORT_KEY,
                description="No table, partition or check is unverified in the report.",
            )
        ],
    )
    def migration_audit_report(
        context: AssetExecutionContext,
        config: ReportConfig,
        target: TargetDatabase,
        options: MigrationOptions,
    ) -> dg.MaterializeResult:  # type: ignore[type-arg]  # Dagster reads this annotation
        plan_path = Path(options.plan_path or "plan.json")
        directory = report_dir(config.out_dir, context.instance)
        report = collect_report(
            context.instance, plan, plan_path, options.settings_shown, directory
        )
        report["anchors"] = anchored_in()
        with as_failure("audit report"):
            prepared = prepare_report(report, directory, report_key(target.secrets.key()))
            json_path, md_path, anchor = write_anchored(prepared, target)
        if anchor != RECORDED:
            context.log.warning(f"report #{prepared.sequence}: target anchor {anchor}")
        saved = prepared.report
        return dg.MaterializeResult(
            metadata={
                "report": dg.MetadataValue.md(render_markdown(saved, details=False)),
                "json": str(json_path),
                "markdown": str(md_path),
                "chain": saved["chain"],
                "sequence": saved["sequence"],
                "digest": saved["digest"],
                "previous_digest": saved["previous_digest"] or "none",
                "target_anchor": anchor,
                "complete": saved["verdict"]["complete"],
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name=REPORT_COMPLETE,
                    passed=saved["verdict"]["complete"],
                    metadata={
                        "problems": dg.MetadataValue.md(
                            "\n".join(f"- {p}" for p in saved["verdict"]["problems"]) or "none"
                        )
                    },
                )
            ],
        )

    return migration_audit_report
