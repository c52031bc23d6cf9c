"""After the data: deferred indexes and constraints back, sequences set, statistics fresh.

`supabase_indexes` adds back every NOT VALID constraint and rebuilds every index the schema
step deferred (or a killed load left recorded on the target), then proves the whole schema,
every index present and valid, every constraint as valid as on the source, equals the
source's. `supabase_sequences` sets each sequence past its column's values and
ANALYZEs what was loaded, so the app's first queries are planned on real statistics.

Each works over one target connection, the one its step's slot of the `supabase_target` pool
stands for: a second session would need a slot Dagster does not know the step holds.
"""

from collections.abc import Callable

import dagster as dg

from migration_assets.db.constraints import recorded_constraints, restore_constraints
from migration_assets.db.indexes import index_groups, recorded, restore_indexes
from migration_assets.db.sequences import lagging_sequences, sync_sequences
from migration_assets.db.state import drop_if_empty
from migration_assets.db.statistics import analyze, stale
from migration_assets.defs.failures import as_failure
from migration_assets.defs.keys import (
    INDEXES_KEY,
    INDEXES_MATCH_SOURCE,
    KINDS,
    SEQUENCES_AHEAD,
    SEQUENCES_KEY,
    TARGET_POOL,
)
from migration_assets.defs.resources import SourceDatabase, TargetDatabase
from migration_assets.defs.schema import differences_md, schema_differences
from migration_assets.plan import MigrationPlan


def build_indexes_asset(plan: MigrationPlan) -> dg.AssetsDefinition:
    @dg.asset(
        key=INDEXES_KEY,
        pool=TARGET_POOL,
        deps=[dg.AssetKey(t.asset_path) for t in plan.tables],
        group_name="finish",
        kinds=KINDS,
        owners=plan.owners,
        description=(
            "Rebuilds, once and after the data, every index the schema step deferred on a "
            "cold load (and any a killed load left recorded on the target); partitioned "
            "tables' indexes on every partition, attached, the parent valid. Adds back the "
            "NOT VALID constraints the schema step dropped for the load, still NOT VALID."
        ),
        check_specs=[
            dg.AssetCheckSpec(
                INDEXES_MATCH_SOURCE,
                asset=INDEXES_KEY,
                blocking=True,
                description=(
                    "The target's schema equals the source's with every index present and "
                    "valid, every constraint back, none left deferred."
                ),
            )
        ],
    )
    def supabase_indexes(
        context: dg.AssetExecutionContext, source: SourceDatabase, target: TargetDatabase
    ) -> dg.MaterializeResult:  # type: ignore[type-arg]  # Dagster reads this annotation
        return rebuild_indexes(plan, source, target, context.log.info)

    return supabase_indexes


def rebuild_indexes(
    plan: MigrationPlan,
    source: SourceDatabase,
    target: TargetDatabase,
    log: Callable[[str], None],
) -> dg.MaterializeResult[None]:
    """What materializing `supabase_indexes` does, for its step and the cutover's final delta
    alike: constraints and deferred indexes back, then the schema proven equal to the source's
    (the result carries that check's verdict)."""
    with as_failure("index rebuild"), target.connect() as conn:
        held = recorded_constraints(conn)
        restore_constraints(conn, held)  # NOT VALID: nothing scanned, instant
        pending = recorded(conn)
        restore_indexes(conn, index_groups(pending), target.connect)  # on this connection
        drop_if_empty(conn)
    log(f"{len(pending)} deferred index(es) rebuilt, {len(held)} constraint(s) added back")
    with as_failure("index check"):
        differences, _ = schema_differences(plan, source, target)
    return dg.MaterializeResult(
        metadata={
            "indexes_rebuilt": len(pending),
            "rebuilt": dg.MetadataValue.md(
                "\n".join(f"- {i.schema}.{i.name} on {i.table}" for i in pending) or "none"
            ),
            "constraints_restored": dg.MetadataValue.md(
                "\n".join(f"- {c.name} on {c.qualified_table}" for c in held) or "none"
            ),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=INDEXES_MATCH_SOURCE,
                passed=not differences,
                metadata={
                    "differences": len(differences),
                    "details": dg.MetadataValue.md(differences_md(differences)),
                },
            )
        ],
    )


def build_sequences_asset(plan: MigrationPlan) -> dg.AssetsDefinition:
    @dg.asset(
        key=SEQUENCES_KEY,
        pool=TARGET_POOL,
        deps=[INDEXES_KEY],
        group_name="finish",
        kinds=KINDS,
        owners=plan.owners,
        description=(
            f"Sets {len(plan.sequences)} target sequence(s) to the source's values after the "
            "data is in (never at a value its column holds: past the max, or the min for a "
            "descending sequence), so the application's next INSERT does not "
            "collide with a migrated key; then ANALYZEs every migrated table whose rows changed "
            "since its last ANALYZE, so the planner has statistics before the app's queries "
            "are timed (and before cutover)."
        ),
    )
    def supabase_sequences(
        context: dg.AssetExecutionContext, source: SourceDatabase, target: TargetDatabase
    ) -> dg.MaterializeResult[None]:
        return set_sequences(plan, source, target, context.log.info)

    return supabase_sequences


def set_sequences(
    plan: MigrationPlan,
    source: SourceDatabase,
    target: TargetDatabase,
    log: Callable[[str], None],
) -> dg.MaterializeResult[None]:
    """What materializing `supabase_sequences` does, for its step and the cutover's final
    delta alike: every sequence past the source's, then ANALYZE of what changed."""
    every = [(s.qualified, s.table, s.column) for s in plan.sequences]
    tables = [(t.schema_name, t.name) for t in plan.tables]
    with as_failure("sequences"), source.connect() as src, target.connect() as tgt:
        written, advanced = sync_sequences(src, tgt, every)
        tgt.commit()
        due = stale(tgt, tables)
        seconds = analyze(tgt, due, target.connect)  # on this connection
        analyzed = len(due)
    log(
        f"{written} sequence(s) set; {analyzed} table(s) analyzed, "
        f"{len(tables) - analyzed} unchanged since their last ANALYZE"
    )
    return dg.MaterializeResult(
        metadata={
            "sequences_set": written,
            "tables_analyzed": len(tables),  # each has statistics taken after its load
            "analyzed_now": analyzed,  # the others' rows had not changed since
            "analyze_seconds": round(seconds, 3),
            "advanced_past_source": dg.MetadataValue.md(
                "\n".join(f"- {a}" for a in advanced) or "none"
            ),
        }
    )


def build_sequences_check(plan: MigrationPlan) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=SEQUENCES_KEY,
        name=SEQUENCES_AHEAD,
        pool=TARGET_POOL,
        description=(
            "Every sequence's next value is beyond its column's values (below the min for a "
            "descending one)."
        ),
    )
    def sequences_ahead(target: TargetDatabase) -> dg.AssetCheckResult:
        return sequences_ahead_result(plan, target)

    return sequences_ahead


def sequences_ahead_result(plan: MigrationPlan, target: TargetDatabase) -> dg.AssetCheckResult:
    """The check `sequences_ahead_of_keys`, for its step and the cutover's final delta."""
    owned = [(s.qualified, s.table, s.column) for s in plan.sequences if s.table and s.column]
    with as_failure("sequences check"), target.connect() as tgt:
        lagging = lagging_sequences(tgt, [(s, t, c) for s, t, c in owned if t and c])
    return dg.AssetCheckResult(
        check_name=SEQUENCES_AHEAD,
        passed=not lagging,
        metadata={
            "checked": len(owned),
            "behind": dg.MetadataValue.md("\n".join(f"- {x}" for x in lagging) or "none"),
        },
    )
