"""Definitions from a plan: one function, used by the code location and the CLI alike."""

from __future__ import annotations

import os

import dagster as dg

from migration_assets.defs.assets import (
    MigrationOptions,
    build_schema_asset,
    build_sequences_asset,
    build_table_asset,
)
from migration_assets.defs.checks import build_checks
from migration_assets.defs.resources import SourceDatabase, TargetDatabase
from migration_assets.plan import MigrationPlan


def _optional_env(name: str) -> str | dg.EnvVar:
    """Optional settings stay optional: an EnvVar that is unset fails at run time."""
    return dg.EnvVar(name) if os.environ.get(name) else ""


def build_resources() -> dict[str, dg.ConfigurableResource]:  # type: ignore[type-arg]
    return {
        "source": SourceDatabase(url=dg.EnvVar("SOURCE_DATABASE_URL")),
        "target": TargetDatabase(
            url=dg.EnvVar("SUPABASE_DB_URL"),
            sslrootcert=_optional_env("SUPABASE_SSLROOTCERT"),
            pooler_url=_optional_env("SUPABASE_POOLER_URL"),
        ),
        "options": MigrationOptions.from_environment(),
    }


def build_assets(plan: MigrationPlan) -> list[dg.AssetsDefinition]:
    from migration_assets.defs.report import build_report_asset

    tables = [build_table_asset(table=t, owners=plan.owners) for t in plan.tables]
    return [
        build_schema_asset(plan),
        *tables,
        build_sequences_asset(plan),
        build_report_asset(plan),
    ]


def build_definitions(plan: MigrationPlan) -> dg.Definitions:
    # In-process: a step is one slice, so a subprocess per step (the default) would cost
    # more than the copy and hold a pool slot while it starts.
    return dg.Definitions(
        assets=build_assets(plan),
        asset_checks=build_checks(plan),
        resources=build_resources(),
        executor=dg.in_process_executor,
    )
