"""Definitions from a plan: one function, used by the code location and the CLI alike.

The graph, in lineage order: migration_preflight -> supabase_schema -> one partitioned
asset per table -> supabase_indexes -> supabase_sequences -> migration_audit_report, with
their checks, the lost-run sensor, and resources whose values come from the settings.
Partitioned asset checks (`slice_row_count`, `slice_checksum`) are a Dagster preview API in
1.13, the one preview API this project relies on: there is no other way to give each slice
its own check result in the UI.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from migration_assets.defs.checks import build_table_checks
from migration_assets.defs.finish import (
    build_indexes_asset,
    build_sequences_asset,
    build_sequences_check,
)
from migration_assets.defs.liveness import lost_migration_runs
from migration_assets.defs.readiness import build_pooler_check, tls_in_use
from migration_assets.defs.report import build_report_asset
from migration_assets.defs.resources import (
    MigrationOptions,
    Secrets,
    SourceDatabase,
    TargetDatabase,
)
from migration_assets.defs.schema import (
    build_preflight_asset,
    build_schema_asset,
    build_schema_checks,
)
from migration_assets.defs.tables import build_table_asset
from migration_assets.plan import MigrationPlan
from migration_assets.settings import Settings


def build_resources(settings: Settings, plan_path: Path | None = None) -> dict[str, object]:
    """Knobs as config values (shown with every run); secrets as one plain object that the
    databases depend on (`Secrets`: never stored with a run)."""
    timeouts = settings.timeouts()
    secrets = Secrets.from_settings(settings)
    if plan_path is not None:  # `--plan` wins over MIGRATION_PLAN, in every step too
        settings = settings.model_copy(update={"migration_plan": plan_path})
    return {
        "settings": settings,  # for the cutover and verify jobs' steps (`Setup`)
        "source": SourceDatabase(
            secrets=secrets,
            network_timeout=timeouts.network,
            statement_timeout=timeouts.statement,
            sslrootcert=settings.source_ca or "",
            tls=settings.migration_source_tls.value,
        ),
        "target": TargetDatabase(
            secrets=secrets,
            network_timeout=timeouts.network,
            statement_timeout=timeouts.statement,
            sslrootcert=settings.sslrootcert or "",
        ),
        "options": MigrationOptions.from_settings(settings),
    }


def build_assets(plan: MigrationPlan) -> list[dg.AssetsDefinition]:
    return [
        build_preflight_asset(plan),
        build_schema_asset(plan),
        *(build_table_asset(table=t, owners=plan.owners) for t in plan.tables),
        build_indexes_asset(plan),
        build_sequences_asset(plan),
        build_report_asset(plan),
    ]


def build_checks(plan: MigrationPlan) -> list[dg.AssetChecksDefinition]:
    return [
        *build_schema_checks(plan),
        tls_in_use,
        build_sequences_check(plan),
        build_pooler_check(plan),
        *(build_table_checks(table=t, plan=plan) for t in plan.tables),
    ]


def build_definitions(
    plan: MigrationPlan, settings: Settings, plan_path: Path | None = None
) -> dg.Definitions:
    # In-process: a step is one slice, so a subprocess per step (the default) would cost
    # more than the copy and hold a pool slot while it starts.
    return dg.Definitions(
        assets=build_assets(plan),
        asset_checks=build_checks(plan),
        sensors=[lost_migration_runs],
        resources=build_resources(settings, plan_path),
        executor=dg.in_process_executor,
    )
