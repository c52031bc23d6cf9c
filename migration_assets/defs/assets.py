"""Assets: the schema, one partitioned asset per table, the sequences.

Thin wiring: every database step lives in `migration_assets.db`; here we only turn its
results into materializations and check results. Any database error is reduced to
`safe_message` before it can reach Dagster's event log.
"""

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
from dagster import AssetCheckExecutionContext, AssetExecutionContext

from migration_assets.db.catalog import read_catalog
from migration_assets.db.copy import CopyTarget, SliceMismatchError, SliceResult, copy_slice
from migration_assets.db.errors import MigrationError, safe_message
from migration_assets.db.exposure import describe, exposed_tables
from migration_assets.db.schema import (
    Difference,
    alembic_revision,
    alembic_upgrade,
    compare_catalogs,
    harden,
    pg_dump_schema,
    plan_drift,
)
from migration_assets.db.sequences import lagging_sequences, sync_sequences
from migration_assets.db.session import server_major
from migration_assets.db.statistics import analyze
from migration_assets.defs.resources import SourceDatabase, TargetDatabase
from migration_assets.plan import MigrationPlan, TablePlan, dagster_name
from migration_assets.settings import SchemaMode

SCHEMA_KEY = dg.AssetKey("supabase_schema")
SEQUENCES_KEY = dg.AssetKey("supabase_sequences")
KINDS = {"postgres", "supabase"}
TARGET_POOL = "supabase_target"

SCHEMA_MATCHES_SOURCE = "schema_matches_source"
PLAN_MATCHES_SOURCE = "plan_matches_source"
DATA_API_LOCKED_DOWN = "data_api_locked_down"
PLAN_FIX = "review the changes, then write a new plan with `migration-assets plan`"
SLICE_ROW_COUNT = "slice_row_count"
SLICE_CHECKSUM = "slice_checksum"
SEQUENCES_AHEAD = "sequences_ahead_of_keys"

REPO_ROOT = Path(__file__).resolve().parents[2]


class MigrationOptions(dg.ConfigurableResource):  # type: ignore[type-arg]
    """Non-secret knobs, read from the environment when definitions load."""

    schema_mode: str = SchemaMode.ALEMBIC.value
    alembic_config: str = ""
    pg_bin: str = ""

    @classmethod
    def from_environment(cls) -> "MigrationOptions":
        return cls(
            schema_mode=os.environ.get("MIGRATION_SCHEMA_MODE", SchemaMode.ALEMBIC.value),
            alembic_config=os.environ.get("MIGRATION_ALEMBIC_CONFIG", ""),
            pg_bin=os.environ.get("MIGRATION_PG_BIN", ""),
        )

    def alembic_ini(self) -> Path:
        if self.alembic_config:
            return Path(self.alembic_config)
        local = Path.cwd() / "alembic.ini"
        return local if local.is_file() else REPO_ROOT / "alembic.ini"


def _differences_md(differences: list[Difference], limit: int = 200) -> str:
    lines = [f"- {d}" for d in differences[:limit]]
    if len(differences) > limit:
        lines.append(f"- ... and {len(differences) - limit} more")
    return "\n".join(lines) or "none"


# ---------------------------------------------------------------- schema


def build_schema_asset(plan: MigrationPlan) -> dg.AssetsDefinition:
    @dg.asset(
        key=SCHEMA_KEY,
        group_name="schema",
        pool=TARGET_POOL,
        kinds=KINDS,
        owners=plan.owners,
        description=(
            "The target's schema, applied per MIGRATION_SCHEMA_MODE (alembic upgrade head by "
            "default) over the direct connection, then locked down for the Data API (RLS on, "
            "no anon/authenticated grants). Its blocking checks compare it with the source."
        ),
    )
    def supabase_schema(
        context: AssetExecutionContext,
        source: SourceDatabase,
        target: TargetDatabase,
        options: MigrationOptions,
    ) -> dg.MaterializeResult[None]:
        try:
            return _schema_step(context, plan, source, target, options)
        except psycopg.Error as exc:
            raise dg.Failure(description=f"schema step failed: {safe_message(exc)}") from None
        except MigrationError as exc:
            raise dg.Failure(description=str(exc)) from None

    return supabase_schema


def _apply_schema(
    plan: MigrationPlan, source: SourceDatabase, target: TargetDatabase, options: MigrationOptions
) -> str:
    mode = SchemaMode(options.schema_mode)
    if mode is SchemaMode.ALEMBIC:
        alembic_upgrade(
            target.url, sslrootcert=target.sslrootcert or None, config_path=options.alembic_ini()
        )
        return "alembic upgrade head"
    if mode is SchemaMode.PG_DUMP:
        with target.connect() as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_tables WHERE schemaname = ANY(%s)", [plan.schemas]
            ).fetchone()
            if row and row[0]:
                return "pg_dump skipped: the target already has tables in the plan's schemas"
            version = server_major(conn)
        pg_dump_schema(
            source.url,
            target.url,
            sslrootcert=target.sslrootcert or None,
            schemas=plan.schemas,
            bin_dir=Path(options.pg_bin) if options.pg_bin else None,
            target_version=version,
        )
        return "pg_dump --schema-only"
    return "existing schema (verified only)"


def _schema_step(
    context: AssetExecutionContext,
    plan: MigrationPlan,
    source: SourceDatabase,
    target: TargetDatabase,
    options: MigrationOptions,
) -> dg.MaterializeResult[None]:
    how = _apply_schema(plan, source, target, options)
    hardened: list[str] = []
    with source.connect() as src, target.connect() as tgt:
        revisions = (alembic_revision(src), alembic_revision(tgt))
        if _hardens(plan, SchemaMode(options.schema_mode)):
            hardened = harden(
                tgt,
                [(t.schema_name, t.name, t.api_grants_allowed) for t in plan.tables],
                exposed_schemas=plan.security.data_api_schemas,
                api_roles=plan.security.api_roles,
            )
            tgt.commit()
    context.log.info(f"schema: {how}; {len(hardened)} hardening step(s)")
    return dg.MaterializeResult(
        metadata={
            "how": how,
            "source_revision": revisions[0] or "none",
            "target_revision": revisions[1] or "none",
            "hardening": dg.MetadataValue.md("\n".join(f"- {h}" for h in hardened) or "none"),
        }
    )


def _hardens(plan: MigrationPlan, mode: SchemaMode) -> bool:
    """A schema we applied is ours to lock down; one provisioned elsewhere only on request
    (the check below names what is exposed either way)."""
    if not plan.security.harden:
        return False
    return mode is not SchemaMode.EXISTING or plan.security.harden_existing_schema


def data_api_exposure(plan: MigrationPlan, target: TargetDatabase) -> dg.AssetCheckResult:
    """Blocking: no patient row may be copied into a table the anon key can read."""
    with target.connect() as conn:
        exposed = exposed_tables(
            conn,
            [(t.schema_name, t.name, t.api_grants_allowed) for t in plan.tables],
            exposed_schemas=plan.security.data_api_schemas,
            api_roles=plan.security.api_roles,
        )
    metadata: dict[str, Any] = {
        "exposed_tables": len(exposed),
        "details": dg.MetadataValue.md(describe(exposed)),
    }
    return dg.AssetCheckResult(
        check_name=DATA_API_LOCKED_DOWN, passed=not exposed, metadata=metadata
    )


def schema_differences(
    plan: MigrationPlan, source: SourceDatabase, target: TargetDatabase
) -> tuple[list[Difference], list[Difference]]:
    """(target vs source schema, source vs plan): what the blocking checks report."""
    with source.connect() as src, target.connect() as tgt:
        src_catalog, tgt_catalog = read_catalog(src), read_catalog(tgt)
        differences = compare_catalogs(
            src_catalog, tgt_catalog, [t.qualified for t in plan.tables], plan.enums
        )
        revisions = (alembic_revision(src), alembic_revision(tgt))
    if revisions[0] != revisions[1]:
        differences.append(
            Difference(
                "alembic_version",
                f"source at {revisions[0]}, target at {revisions[1]}: bring both to the same "
                "revision",
            )
        )
    drift = plan_drift(
        {t.qualified: [(c.name, c.type) for c in t.columns] for t in plan.tables},
        src_catalog,
        plan.schemas,
        ignore=plan.skipped,
    )
    return differences, drift


def build_schema_checks(plan: MigrationPlan) -> list[dg.AssetChecksDefinition]:
    @dg.multi_asset_check(
        specs=[
            dg.AssetCheckSpec(
                SCHEMA_MATCHES_SOURCE,
                asset=SCHEMA_KEY,
                blocking=True,
                description="Tables, columns and types, keys, indexes and enum labels equal.",
            ),
            dg.AssetCheckSpec(
                PLAN_MATCHES_SOURCE,
                asset=SCHEMA_KEY,
                blocking=True,
                description="The source still has exactly the tables and columns planned.",
            ),
            dg.AssetCheckSpec(
                DATA_API_LOCKED_DOWN,
                asset=SCHEMA_KEY,
                blocking=True,
                description=(
                    "No planned table in a schema the Data API serves is readable with the "
                    "anon key (RLS on, no grants the plan does not allow): checked before any "
                    "row is copied."
                ),
            ),
        ],
        can_subset=True,
        pool=TARGET_POOL,
        name="supabase_schema__checks",
    )
    def schema_checks(
        context: AssetCheckExecutionContext, source: SourceDatabase, target: TargetDatabase
    ) -> Iterator[dg.AssetCheckResult]:
        selected = {k.name for k in context.selected_asset_check_keys}
        try:
            differences, drift = schema_differences(plan, source, target)
            if DATA_API_LOCKED_DOWN in selected:
                yield data_api_exposure(plan, target)
        except psycopg.Error as exc:
            raise dg.Failure(description=f"schema check: {safe_message(exc)}") from None
        if SCHEMA_MATCHES_SOURCE in selected:
            yield dg.AssetCheckResult(
                check_name=SCHEMA_MATCHES_SOURCE,
                passed=not differences,
                metadata={
                    "differences": len(differences),
                    "details": dg.MetadataValue.md(_differences_md(differences)),
                },
            )
        if PLAN_MATCHES_SOURCE in selected:
            yield dg.AssetCheckResult(
                check_name=PLAN_MATCHES_SOURCE,
                passed=not drift,
                metadata={
                    "differences": len(drift),
                    "details": dg.MetadataValue.md(_differences_md(drift)),
                    **({"fix": PLAN_FIX} if drift else {}),
                },
            )

    return [schema_checks]


# ---------------------------------------------------------------- tables


def table_description(table: TablePlan) -> str:
    refs = sorted({fk.ref_qualified for fk in table.foreign_keys})
    lines = [
        table.describe(),
        "",
        f"Columns: {len(table.columns)}; size on the source at planning: "
        f"{table.size_bytes / 1e6:.1f} MB.",
    ]
    if refs:
        lines.append("References: " + ", ".join(refs) + ".")
    lines.append(
        "Materializing a partition deletes that slice on the target and copies it again in "
        "one transaction, then verifies row count and checksum on both sides before COMMIT."
    )
    return "\n".join(lines)


def _column_schema(table: TablePlan) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                name=c.name,
                type=c.type,
                description="generated on the target" if c.generated else None,
                constraints=dg.TableColumnConstraints(nullable=c.nullable),
            )
            for c in table.columns
        ]
    )


def build_table_asset(*, table: TablePlan, owners: list[str] | None = None) -> dg.AssetsDefinition:
    key = dg.AssetKey(table.asset_path)
    partitions = dg.StaticPartitionsDefinition(table.partition_keys)
    checks = [
        dg.AssetCheckSpec(
            name,
            asset=key,
            partitions_def=partitions,
            description=text,
        )
        for name, text in (
            (SLICE_ROW_COUNT, "Rows in this slice equal on source and target."),
            (SLICE_CHECKSUM, "Checksum of this slice's rows equal on source and target."),
        )
    ]
    job = CopyTarget(
        spec=table.slice(0),
        copy_columns=table.copy_columns,
        checksum_columns=table.checksum_columns,
        binary_safe=table.binary_safe,
    )

    @dg.asset(
        key=key,
        partitions_def=partitions,
        deps=[SCHEMA_KEY],
        group_name=f"tables_{dagster_name(table.schema_name)}",
        kinds=KINDS,
        owners=owners,
        description=table_description(table),
        check_specs=checks,
        pool=TARGET_POOL,
        metadata={
            "dagster/column_schema": _column_schema(table),
            "dagster/table_name": table.qualified,
            "key": ", ".join(table.key) or "none",
            "slice_strategy": table.slicing.strategy.value,
            "partitions": table.slicing.partitions,
            "row_estimate": table.row_estimate,
            "references": ", ".join(sorted({fk.ref_qualified for fk in table.foreign_keys}))
            or "none",
        },
        name=None,
    )
    def _table(
        context: AssetExecutionContext, source: SourceDatabase, target: TargetDatabase
    ) -> Iterator[Any]:
        spec = table.slice(context.partition_key)
        this = CopyTarget(spec, job.copy_columns, job.checksum_columns, job.binary_safe)
        try:
            with source.connect() as src, target.connect() as tgt:
                result = copy_slice(src, tgt, this)
        except SliceMismatchError as exc:
            yield from _slice_checks(exc.result)
            raise dg.Failure(description=str(exc), metadata=_slice_metadata(exc.result)) from None
        except MigrationError as exc:
            raise dg.Failure(description=str(exc)) from None
        except psycopg.Error as exc:
            raise dg.Failure(description=f"{table.qualified}: {safe_message(exc)}") from None
        yield dg.MaterializeResult(
            metadata={**_slice_metadata(result), "slice_fingerprint": spec.fingerprint}
        )
        yield from _slice_checks(result)

    return _table


def _slice_metadata(result: SliceResult) -> dict[str, Any]:
    return {
        "dagster/row_count": result.target.rows,
        "rows": result.rows,
        "bytes": result.bytes,
        "seconds": round(result.seconds, 3),
        "rows_per_second": round(result.rows_per_second, 1),
        "copy_format": "binary" if result.binary else "text",
        "source_checksum": result.source.digest,
        "target_checksum": result.target.digest,
        "source_rows": result.source.rows,
        "target_rows": result.target.rows,
    }


def _slice_checks(result: SliceResult) -> Iterator[dg.AssetCheckResult]:
    yield dg.AssetCheckResult(
        check_name=SLICE_ROW_COUNT,
        passed=result.source.rows == result.target.rows,
        metadata={"source_rows": result.source.rows, "target_rows": result.target.rows},
    )
    yield dg.AssetCheckResult(
        check_name=SLICE_CHECKSUM,
        passed=result.source.digest == result.target.digest,
        metadata={
            "source_checksum": result.source.digest,
            "target_checksum": result.target.digest,
        },
    )


# ---------------------------------------------------------------- sequences


def build_sequences_asset(plan: MigrationPlan) -> dg.AssetsDefinition:
    every = [(s.qualified, s.table, s.column) for s in plan.sequences]
    tables = [(t.schema_name, t.name) for t in plan.tables]

    @dg.asset(
        key=SEQUENCES_KEY,
        pool=TARGET_POOL,
        deps=[dg.AssetKey(t.asset_path) for t in plan.tables],
        group_name="sequences",
        kinds=KINDS,
        owners=plan.owners,
        description=(
            f"Sets {len(every)} target sequence(s) to the source's values after the data is "
            "in (never at or below a column's max), so the application's next INSERT does not "
            "collide with a migrated key; then ANALYZEs every migrated table, so the planner "
            "has statistics before the app's queries are timed (and before cutover)."
        ),
    )
    def supabase_sequences(
        context: AssetExecutionContext, source: SourceDatabase, target: TargetDatabase
    ) -> dg.MaterializeResult[None]:
        try:
            with source.connect() as src, target.connect() as tgt:
                written, advanced = sync_sequences(src, tgt, every)
                tgt.commit()
                analyzed, seconds = analyze(tgt, tables)
        except psycopg.Error as exc:
            raise dg.Failure(description=f"sequences: {safe_message(exc)}") from None
        context.log.info(f"{written} sequence(s) set; {analyzed} table(s) analyzed")
        return dg.MaterializeResult(
            metadata={
                "sequences_set": written,
                "tables_analyzed": analyzed,
                "analyze_seconds": round(seconds, 3),
                "advanced_past_source": dg.MetadataValue.md(
                    "\n".join(f"- {a}" for a in advanced) or "none"
                ),
            }
        )

    return supabase_sequences


def build_sequences_check(plan: MigrationPlan) -> dg.AssetChecksDefinition:
    owned = [(s.qualified, s.table, s.column) for s in plan.sequences if s.table and s.column]

    @dg.asset_check(
        asset=SEQUENCES_KEY,
        name=SEQUENCES_AHEAD,
        pool=TARGET_POOL,
        description="Every sequence's next value is above its column's largest value.",
    )
    def sequences_ahead(target: TargetDatabase) -> dg.AssetCheckResult:
        try:
            with target.connect() as tgt:
                lagging = lagging_sequences(tgt, [(s, t, c) for s, t, c in owned if t and c])
        except psycopg.Error as exc:
            raise dg.Failure(description=f"sequences check: {safe_message(exc)}") from None
        return dg.AssetCheckResult(
            passed=not lagging,
            metadata={
                "checked": len(owned),
                "behind": dg.MetadataValue.md("\n".join(f"- {x}" for x in lagging) or "none"),
            },
        )

    return sequences_ahead
