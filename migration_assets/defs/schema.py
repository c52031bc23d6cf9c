"""The preflight and the schema: what must hold before a single row is copied.

`migration_preflight` proves the roles can do the whole job (and the source's text can
become UTF-8) while nothing is written yet. `supabase_schema` applies the schema, locks it
down for the Data API, and on a cold target defers the big tables' plain indexes (recorded
on the target first, rebuilt by `supabase_indexes`). Its blocking checks compare it with
the source and refuse to let PHI into a table the anon key could read.
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
from dagster import AssetCheckExecutionContext, AssetExecutionContext

from migration_assets.db.catalog import read_catalog
from migration_assets.db.constraints import defer_constraints, recorded_constraints
from migration_assets.db.errors import MigrationError
from migration_assets.db.exposure import describe, exposed_tables
from migration_assets.db.indexes import Deferred, defer_indexes, is_empty, recorded
from migration_assets.db.preflight import source_problems, target_problems
from migration_assets.db.schema import (
    alembic_mismatch,
    alembic_revision,
    alembic_upgrade,
    carry_revision,
    harden,
    pg_dump_schema,
    present_tables,
)
from migration_assets.db.schema_diff import (
    Difference,
    compare_catalogs,
    plan_drift,
    without_constraints,
    without_indexes,
)
from migration_assets.db.session import server_major
from migration_assets.defs.failures import as_failure
from migration_assets.defs.keys import (
    DATA_API_LOCKED_DOWN,
    KINDS,
    PLAN_MATCHES_SOURCE,
    PREFLIGHT_KEY,
    SCHEMA_KEY,
    SCHEMA_MATCHES_SOURCE,
    TARGET_POOL,
)
from migration_assets.defs.resources import MigrationOptions, SourceDatabase, TargetDatabase
from migration_assets.plan import MigrationPlan
from migration_assets.settings import SchemaMode

PLAN_FIX = "review the changes, then write a new plan with `migration-assets plan`"


# ---------------------------------------------------------------- preflight


def build_preflight_asset(plan: MigrationPlan) -> dg.AssetsDefinition:
    tables = [(t.schema_name, t.name) for t in plan.tables]

    @dg.asset(
        key=PREFLIGHT_KEY,
        group_name="schema",
        pool=TARGET_POOL,
        kinds=KINDS,
        owners=plan.owners,
        description=(
            "Before anything is written: in alembic schema mode, the Alembic scripts describe "
            "the source (its alembic_version names one of their revisions); the source role "
            "may read every row of every planned "
            "table (no row-level security policy binds it; its text can become UTF-8), the "
            "target role may create, write and load every one "
            "with triggers off. Fails naming each problem and the GRANT that fixes it."
        ),
    )
    def migration_preflight(
        source: SourceDatabase, target: TargetDatabase, options: MigrationOptions
    ) -> dg.MaterializeResult[None]:
        with as_failure("preflight"):
            with source.connect() as src:
                problems = source_problems(src, tables)
                if SchemaMode(options.schema_mode) is SchemaMode.ALEMBIC:
                    mismatch = alembic_mismatch(src, options.alembic_ini())
                    problems += [mismatch] if mismatch else []
            with target.connect() as tgt:
                problems += target_problems(tgt, tables)
        if problems:
            raise dg.Failure(
                description="nothing was written; fix these first:\n"
                + "\n".join(f"  - {p}" for p in problems)
            )
        return dg.MaterializeResult(
            metadata={"tables_checked": len(tables), "source": source.shown, "target": target.shown}
        )

    return migration_preflight


def differences_md(differences: list[Difference], limit: int = 200) -> str:
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
        deps=[PREFLIGHT_KEY],
        description=(
            "The target's schema, applied per MIGRATION_SCHEMA_MODE (alembic upgrade head by "
            "default) over the direct connection, then locked down for the Data API (RLS on, "
            "no anon/authenticated grants). On a cold target, big tables' plain indexes are "
            "deferred (recorded on the target, rebuilt by supabase_indexes after the data). "
            "Its blocking checks compare it with the source."
        ),
    )
    def supabase_schema(
        context: AssetExecutionContext,
        source: SourceDatabase,
        target: TargetDatabase,
        options: MigrationOptions,
    ) -> dg.MaterializeResult[None]:
        with as_failure("schema step failed"):
            return _schema_step(context, plan, source, target, options)
        raise AssertionError("as_failure always raises")  # for the type checker

    return supabase_schema


def _apply_schema(
    plan: MigrationPlan, source: SourceDatabase, target: TargetDatabase, options: MigrationOptions
) -> str:
    mode = SchemaMode(options.schema_mode)
    if mode is SchemaMode.ALEMBIC:
        alembic_upgrade(
            target.url,
            sslrootcert=target.sslrootcert or None,
            config_path=options.alembic_ini(),
            timeouts=target.timeouts,
        )
        return "alembic upgrade head"
    if mode is SchemaMode.PG_DUMP:
        return _pg_dump_schema(plan, source, target, options)
    return "existing schema (verified only)"


def _pg_dump_schema(
    plan: MigrationPlan, source: SourceDatabase, target: TargetDatabase, options: MigrationOptions
) -> str:
    """The source's schema, applied once: a target that has every planned table has it (an
    earlier attempt's), one that has none gets it, in one transaction. A target with only
    some of them was changed by someone else: nothing is guessed, the tables are named."""
    planned = [(t.schema_name, t.name) for t in plan.tables]
    with target.connect() as conn:
        present = present_tables(conn, planned)
        version = server_major(conn)
    if present and len(present) == len(planned):
        return "pg_dump skipped: the target already has every planned table"
    if present:
        raise MigrationError(
            f"the target already has {len(present)} of the plan's {len(planned)} tables "
            f"({', '.join(present[:5])}{', …' if len(present) > 5 else ''}) but not the "
            "others; MIGRATION_SCHEMA_MODE=pg_dump applies the source's whole schema or "
            "nothing. Drop those tables on the target, or create the others there and use "
            "MIGRATION_SCHEMA_MODE=existing"
        )
    pg_dump_schema(
        source.dsn,
        target.url,
        sslrootcert=target.sslrootcert or None,
        schemas=plan.schemas,
        bin_dir=Path(options.pg_bin) if options.pg_bin else None,
        target_version=version,
    )
    with source.connect() as src, target.connect() as tgt:
        carry_revision(src, tgt)
    return "pg_dump --schema-only"


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
        deferred = _defer_cold_indexes(tgt, plan, options.defer_indexes_above)
        # old rows may break them, and COPY checks every row: back after the data
        held = defer_constraints(tgt, [(t.schema_name, t.name) for t in plan.tables])
    context.log.info(
        f"schema: {how}; {len(hardened)} hardening step(s); {len(deferred)} index(es) and "
        f"{len(held)} NOT VALID constraint(s) deferred"
    )
    return dg.MaterializeResult(
        metadata={
            "how": how,
            "source_revision": revisions[0] or "none",
            "target_revision": revisions[1] or "none",
            "hardening": dg.MetadataValue.md("\n".join(f"- {h}" for h in hardened) or "none"),
            "deferred_indexes": dg.MetadataValue.md(
                "\n".join(f"- {d.schema}.{d.name} on {d.table}" for d in deferred) or "none"
            ),
            "deferred_constraints": dg.MetadataValue.md(
                "\n".join(f"- {c.name} on {c.qualified_table}" for c in held) or "none"
            ),
        }
    )


def _defer_cold_indexes(
    conn: psycopg.Connection[Any], plan: MigrationPlan, threshold: int
) -> list[Deferred]:
    """Tables that are empty on the target and big enough to matter load without their plain
    indexes; the record on the target makes a killed load's rebuild certain."""
    if threshold < 0:
        return []
    cold = [
        (t.schema_name, t.name)
        for t in plan.tables
        if t.row_estimate >= threshold
        and is_empty(conn, t.schema_name, t.name, partitioned=t.partitioned)
    ]
    return defer_indexes(conn, cold)


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
    plan: MigrationPlan,
    source: SourceDatabase,
    target: TargetDatabase,
    *,
    allow_deferred: bool = False,
) -> tuple[list[Difference], list[Difference]]:
    """(target vs source schema, source vs plan): what the blocking checks report.

    `allow_deferred`: indexes and NOT VALID constraints recorded as deferred for a load are
    expected to be absent (supabase_indexes adds them back, and its check allows nothing to
    be missing)."""
    with source.connect() as src, target.connect() as tgt:
        src_catalog, tgt_catalog = read_catalog(src), read_catalog(tgt)
        if allow_deferred:
            deferred = [(f"{d.schema}.{d.table}", d.name) for d in recorded(tgt)]
            src_catalog = without_indexes(src_catalog, deferred)
            held = [
                (c.qualified_table, c.name, c.definition, c.column)
                for c in recorded_constraints(tgt)
            ]
            src_catalog = without_constraints(src_catalog, held)
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
        with as_failure("schema check"):
            differences, drift = schema_differences(plan, source, target, allow_deferred=True)
            exposure = data_api_exposure(plan, target)
        if DATA_API_LOCKED_DOWN in selected:
            yield exposure
        if SCHEMA_MATCHES_SOURCE in selected:
            yield _differences_result(SCHEMA_MATCHES_SOURCE, differences)
        if PLAN_MATCHES_SOURCE in selected:
            yield _differences_result(PLAN_MATCHES_SOURCE, drift, fix=PLAN_FIX)

    return [schema_checks]


def _differences_result(
    name: str, differences: list[Difference], fix: str | None = None
) -> dg.AssetCheckResult:
    """Both schema checks report the same way: passed when nothing differs, else each
    difference (names only, never values) and, when there is one, the fix."""
    return dg.AssetCheckResult(
        check_name=name,
        passed=not differences,
        metadata={
            "differences": len(differences),
            "details": dg.MetadataValue.md(differences_md(differences)),
            **({"fix": fix} if differences and fix else {}),
        },
    )
