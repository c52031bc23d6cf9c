"""The code location: Definitions built from the plan file alone (no database at import).

`dagster dev -w workspace.yaml` loads this module; MIGRATION_PLAN names the plan. Without
it (a fresh clone, nothing configured yet) the plan shipped for this repository's own
schema (plans/demo.json, the Alembic revisions' tables) loads instead, so the UI opens and
shows what a migration looks like; every asset then says so in its description and
metadata, and a warning is logged, so nobody mistakes it for their own database's plan.
"""

from __future__ import annotations

import logging
from pathlib import Path

import dagster as dg

from migration_assets.defs.build import build_definitions
from migration_assets.engine.cutover import cutover_definitions
from migration_assets.engine.verify import verify_and_report
from migration_assets.plan import MigrationPlan, load_plan
from migration_assets.settings import Settings, load_settings

SHIPPED_PLAN = Path(__file__).resolve().parent / "plans" / "demo.json"
SHIPPED_NOTE = (
    "Plan: the shipped plan for this repo's own schema (MIGRATION_PLAN is not set). "
    "To migrate your database: `migration-assets plan --out plan.json`, review it, "
    "`export MIGRATION_PLAN=$PWD/plan.json` and reload the code location."
)

log = logging.getLogger(__name__)


def _plan(settings: Settings) -> tuple[MigrationPlan, bool, Path]:
    """The configured plan, or (shipped plan, True) when MIGRATION_PLAN is not set; its path."""
    path = settings.migration_plan
    if path:
        return load_plan(path), False, path
    log.warning("%s Loading %s.", SHIPPED_NOTE, SHIPPED_PLAN)
    return load_plan(SHIPPED_PLAN), True, Path(SHIPPED_PLAN)


def _mark_shipped(spec: dg.AssetSpec) -> dg.AssetSpec:
    description = SHIPPED_NOTE + ("\n\n" + spec.description if spec.description else "")
    return spec.replace_attributes(
        description=description,
        metadata={**spec.metadata, "plan": f"shipped: {SHIPPED_PLAN.name} (MIGRATION_PLAN unset)"},
    )


def build() -> dg.Definitions:
    settings = load_settings()  # the environment, or .env in the working directory
    plan, shipped, plan_path = _plan(settings)
    # jobs beside the asset graph: "Materialize all" must never freeze a production database
    definitions = dg.Definitions.merge(
        build_definitions(plan, settings, plan_path),
        cutover_definitions(),
        dg.Definitions(jobs=[verify_and_report]),
    )
    return definitions.map_asset_specs(func=_mark_shipped) if shipped else definitions


defs: dg.Definitions = build()
