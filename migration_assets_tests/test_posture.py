"""What the operator is told before success: Data API exposure, statistics, honest reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest

from migration_assets.cli.demo import _checks_failure
from migration_assets.defs.keys import (
    DATA_API_LOCKED_DOWN,
    PLAN_MATCHES_SOURCE,
    RLS_ENABLED,
    SCHEMA_KEY,
    SEQUENCES_KEY,
    TARGET_POOL,
)
from migration_assets.engine.session import Session
from migration_assets.plan import load_plan, save_plan
from migration_assets.settings import load_settings
from migration_assets_tests.conftest import Databases, Migration, MigrationFactory
from migration_assets_tests.helpers import run_cli

pytestmark = pytest.mark.integration

CHARTS = """
CREATE TABLE public.charts (id int PRIMARY KEY, mrn text NOT NULL, note text);
CREATE TABLE public."Lab Results" (id int PRIMARY KEY, chart_id int, value numeric);
"""
CHART_ROWS = """
INSERT INTO public.charts SELECT i, 'MRN-' || i, 'note ' || i FROM generate_series(1, 40) i;
INSERT INTO public."Lab Results" SELECT i, i, i / 3.0 FROM generate_series(1, 40) i;
"""
RLS_FIX = "ALTER TABLE public.charts ENABLE ROW LEVEL SECURITY;"
LAB_FIX = 'ALTER TABLE public."Lab Results" ENABLE ROW LEVEL SECURITY;'
GRANT_FIX = "REVOKE ALL ON TABLE public.charts FROM anon, authenticated;"


def _evaluations(home: Path, key: dg.AssetCheckKey) -> dict[str, Any]:
    instance = dg.DagsterInstance.from_config(str(home))
    record = instance.get_latest_asset_check_evaluation_record(key)
    assert record is not None
    assert record.event is not None
    assert record.event.dagster_event is not None
    evaluation = record.event.dagster_event.event_specific_data
    return {k: getattr(v, "value", v) for k, v in evaluation.metadata.items()}  # type: ignore[union-attr]


def _metadata(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict[str, Any]:
    latest = instance.get_latest_materialization_event(key)
    assert latest is not None
    assert latest.asset_materialization is not None
    return {k: getattr(v, "value", v) for k, v in latest.asset_materialization.metadata.items()}


def _unfolded(output: str) -> str:
    """The CLI's table with borders and folding removed, so a long detail reads as one."""
    return " ".join(output.replace("│", " ").split())


def _exposed_target(
    migration: MigrationFactory, databases: Databases, monkeypatch: pytest.MonkeyPatch
) -> Migration:
    """A schema provisioned elsewhere, in `public`, by the migration role: Supabase's default
    privileges grant it to anon and authenticated, and nobody turned RLS on."""
    source, target = databases.existing_pair(CHARTS, CHART_ROWS, monkeypatch)
    m = migration(source_url=source, target_url=target)
    code, output = run_cli(["plan", "--out", str(m.plan_path)])
    assert code == 0, output
    return m


def test_existing_schema_exposed_to_the_data_api_is_refused_before_any_row_is_copied(
    migration: MigrationFactory,
    databases: Databases,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    m = _exposed_target(migration, databases, monkeypatch)
    code, output = run_cli(["migrate", "--workers", "1"])
    assert code == 1, output
    assert "no data was copied" in output
    assert "readable through the Supabase Data API" in output
    for statement in (RLS_FIX, LAB_FIX, GRANT_FIX, "harden_existing_schema"):
        assert statement in output, output
    with psycopg.connect(m.target_url) as conn:
        assert conn.execute("SELECT count(*) FROM public.charts").fetchone() == (0,)

    # the failing check, `verify` and the report carry the same text
    schema_check = _evaluations(m.dagster_home, dg.AssetCheckKey(SCHEMA_KEY, DATA_API_LOCKED_DOWN))
    assert RLS_FIX in str(schema_check["details"])
    code, output = run_cli(["verify"])
    assert code == 1, output
    table_check = _evaluations(
        m.dagster_home, dg.AssetCheckKey(dg.AssetKey(["public", "charts"]), RLS_ENABLED)
    )
    assert RLS_FIX in str(table_check["details"])
    assert RLS_FIX in _unfolded(output)
    assert "could not run" not in output, "a failed blocking check is a result, not a crash"
    code, output = run_cli(["report", "--out", str(tmp_path / "audit")])
    assert code == 1, output
    report = json.loads((tmp_path / "audit" / "audit-0001.json").read_text())
    problems = "\n".join(report["verdict"]["problems"])
    assert RLS_FIX in problems
    assert GRANT_FIX in problems
    assert RLS_FIX in (tmp_path / "audit" / "audit-0001.md").read_text()


def test_the_plan_option_lets_the_tool_lock_an_existing_schema_down(
    migration: MigrationFactory, databases: Databases, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = _exposed_target(migration, databases, monkeypatch)
    plan = load_plan(m.plan_path)
    security = plan.security.model_copy(update={"harden_existing_schema": True})
    save_plan(plan.model_copy(update={"security": security}), m.plan_path)
    code, output = run_cli(["migrate", "--workers", "1"])
    assert code == 0, output
    with psycopg.connect(m.target_url) as conn:
        rls = conn.execute(
            "SELECT bool_and(relrowsecurity) FROM pg_class "
            "WHERE oid IN ('public.charts'::regclass, 'public.\"Lab Results\"'::regclass)"
        ).fetchone()
        grants = conn.execute(
            "SELECT count(*) FROM information_schema.role_table_grants "
            "WHERE table_schema = 'public' AND grantee IN ('anon', 'authenticated')"
        ).fetchone()
    assert rls == (True,)
    assert grants == (0,)


def test_loaded_tables_are_analyzed_before_the_readiness_check(
    migration: MigrationFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    m = migration()
    monkeypatch.delenv("SUPABASE_POOLER_URL", raising=False)  # pooler_ready: WARN, not ERROR
    code, output = run_cli(["plan", "--out", str(m.plan_path)])
    assert code == 0, output
    code, output = run_cli(["migrate", "--workers", "1"])
    assert code == 0, output
    plan = load_plan(m.plan_path)
    with psycopg.connect(m.target_url) as conn:
        never = conn.execute(
            "SELECT count(*) FROM pg_stat_user_tables "
            "WHERE schemaname || '.' || relname = ANY(%s) AND last_analyze IS NULL",
            [[t.qualified for t in plan.tables]],
        ).fetchone()
    assert never == (0,), "a migrated table has no statistics of ours"
    instance = dg.DagsterInstance.from_config(str(m.dagster_home))
    assert _metadata(instance, SEQUENCES_KEY)["analyzed_now"] == len(plan.tables)
    pool = instance.event_log_storage.get_concurrency_info(TARGET_POOL)
    assert (pool.claimed_slots, pool.pending_steps) == ([], []), "a finish step kept a slot"
    code, output = run_cli(["migrate", "--workers", "1"])  # nothing moved: nothing re-sampled
    assert code == 0, output
    meta = _metadata(instance, SEQUENCES_KEY)
    assert (meta["analyzed_now"], meta["tables_analyzed"]) == (0, len(plan.tables)), meta

    code, output = run_cli(["verify"])
    assert code == 0, output
    plan_row = next(line for line in output.splitlines() if PLAN_MATCHES_SOURCE in line)
    assert "new plan" not in plan_row, "a passing check shows no fix"
    code, output = run_cli(["report", "--out", str(tmp_path / "audit")])
    assert code == 0, output
    report = json.loads((tmp_path / "audit" / "audit-0001.json").read_text())
    assert report["statistics"]["tables_analyzed"] == len(plan.tables)
    markdown = (tmp_path / "audit" / "audit-0001.md").read_text()
    assert "## Verdict: COMPLETE" in markdown
    assert "pooler_ready: WARN" in markdown
    assert "FAIL" not in markdown
    assert f"ANALYZE of {len(plan.tables)} table(s) after the load" in markdown


def test_a_failed_verify_is_named_on_the_demo_s_last_line(migration: MigrationFactory) -> None:
    m = migration()
    assert run_cli(["plan", "--out", str(m.plan_path)])[0] == 0
    assert run_cli(["migrate", "--workers", "1"])[0] == 0
    with psycopg.connect(m.target_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE public.patients DISABLE ROW LEVEL SECURITY")
    runner = Session.open(load_settings(env_file=None), m.plan_path)
    line = _checks_failure(runner.run_checks([runner.plan.table("public.patients")]))
    assert line == "1 check(s) failed: public/patients rls_enabled", line
