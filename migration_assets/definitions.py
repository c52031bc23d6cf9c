"""The code location: Definitions built from the plan file alone (no database at import).

`dagster dev -w workspace.yaml` loads this module; MIGRATION_PLAN names the plan.
"""

from __future__ import annotations

import os

import dagster as dg

from migration_assets.defs.build import build_definitions
from migration_assets.plan import load_plan


def _plan_path() -> str:
    path = os.environ.get("MIGRATION_PLAN")
    if not path:
        raise RuntimeError(
            "MIGRATION_PLAN is not set: write a plan with `migration-assets plan --out "
            "plan.json`, review it, then `export MIGRATION_PLAN=$PWD/plan.json` and reload. "
            "(`migration-assets ui` sets it for you.)"
        )
    return path


defs: dg.Definitions = build_definitions(load_plan(_plan_path()))
