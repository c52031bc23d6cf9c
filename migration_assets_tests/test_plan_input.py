"""The plan is input: a reviewed file people edit, and so a way into SQL.

Whatever of it reaches SQL is checked when it loads, with the path of the bad field; the
application queries it carries run read-only; and without any plan (a fresh clone) the
code location loads the shipped plan and says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from migration_assets.defs.keys import POOLER_READY
from migration_assets.engine.session import Session
from migration_assets.plan import PlanError, load_plan
from migration_assets.planner import build_plan
from migration_assets.settings import SETTING_NAMES, load_settings
from migration_assets_tests.conftest import REPO_ROOT, Databases, Migration, MigrationFactory
from migration_assets_tests.helpers import PLAN_ARGS, run_cli

HOSTILE = "int; DROP TABLE x"


def _planned(migration: MigrationFactory) -> Migration:
    m = migration()
    code, output = run_cli(["plan", "--out", str(m.plan_path), *PLAN_ARGS])
    assert code == 0, output
    return m


def _edit(path: Path, change: Any) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _range_table(data: dict[str, Any]) -> int:
    return next(i for i, t in enumerate(data["tables"]) if t["slicing"]["strategy"] == "range")


@pytest.mark.integration
def test_a_hostile_key_type_is_refused_naming_the_field(migration: MigrationFactory) -> None:
    m = _planned(migration)
    index = _range_table(json.loads(m.plan_path.read_text()))
    _edit(m.plan_path, lambda d: d["tables"][index]["slicing"].update(key_type=HOSTILE))
    for command in (["migrate", "--workers", "1"], ["status"]):
        code, output = run_cli(command)
        assert code == 2, output
        flat = " ".join(output.split())
        assert f"plan file {m.plan_path} is invalid" in flat
        assert f"tables[{index}].slicing.key_type: '{HOSTILE}' is not a known range type" in flat
        assert "(one of bigint, date," in flat
    with psycopg.connect(m.target_url) as conn:  # nothing ran: no table was even created
        assert conn.execute("SELECT to_regclass('public.patients')").fetchone() == (None,)


def _refused(path: Path, change: Any) -> str:
    _edit(path, change)
    with pytest.raises(PlanError) as caught:
        load_plan(path)
    return str(caught.value)


def test_plan_sanity_is_checked_on_load(tmp_path: Path) -> None:
    shipped = REPO_ROOT / "migration_assets" / "plans" / "demo.json"
    plan = tmp_path / "plan.json"

    def fresh() -> dict[str, Any]:
        data: dict[str, Any] = json.loads(shipped.read_text())
        return data

    index = _range_table(fresh())

    def with_range(**values: Any) -> Any:
        return lambda d: d["tables"][index]["slicing"].update(values)

    plan.write_text(json.dumps(fresh()))
    message = _refused(plan, with_range(partitions=0))
    assert f"tables[{index}].slicing.partitions: Input should be greater than or equal to 1" in (
        message
    )
    plan.write_text(json.dumps(fresh()))
    bounds = len(fresh()["tables"][index]["slicing"]["bounds"])
    message = _refused(plan, with_range(partitions=bounds + 5))
    assert f"tables[{index}].slicing: a range slicing of {bounds + 5} partitions needs" in message
    plan.write_text(json.dumps(fresh()))
    message = _refused(plan, lambda d: d["tables"][0].update(key=["no_such_column"]))
    assert "tables[0]:" in message
    assert "key names 'no_such_column', which is not among the table's columns" in message
    plan.write_text(json.dumps(fresh()))
    message = _refused(plan, with_range(key_type="numeric(10,2)"))
    assert "is not a known range type" in message
    plan.write_text(json.dumps(fresh()))
    assert load_plan(plan).tables, "the shipped plan itself is valid"


@pytest.mark.integration
def test_an_app_query_that_writes_changes_nothing(migration: MigrationFactory) -> None:
    m = _planned(migration)
    assert m.pooler_url, "the devstack has a pooler"
    code, output = run_cli(["migrate", "--workers", "1"])
    assert code == 0, output
    writes = [
        {
            "name": "hostile delete",
            "sql": "DELETE FROM public.observations WHERE id = %s",
            "sample_sql": "SELECT id FROM public.observations ORDER BY id LIMIT 5",
            "refused": "of the plan writes: app queries run READ ONLY",
        },
        {  # the sample query tries to step out of the transaction
            "name": "hostile sample",
            "sql": "SELECT 1 WHERE %s::int IS NOT NULL",
            "sample_sql": "SELECT 1; COMMIT; DELETE FROM public.observations",
            "refused": "cannot insert multiple commands",
        },
    ]
    count = "SELECT count(*) FROM public.observations"
    with psycopg.connect(m.target_url) as conn:
        before = conn.execute(count).fetchone()
    for query in writes:
        refused = query.pop("refused")
        _edit(m.plan_path, lambda d, q=query: d.update(app_queries=[q]))
        result = Session.open(load_settings(env_file=None), m.plan_path).run_checks()
        pooler = next(
            e for e in result.get_asset_check_evaluations() if e.check_name == POOLER_READY
        )
        assert not pooler.passed
        error = str(getattr(pooler.metadata["error"], "value", pooler.metadata["error"]))
        assert refused in error, error
        with psycopg.connect(m.target_url) as conn:
            assert conn.execute(count).fetchone() == before, "an app query deleted rows"
    assert before is not None
    assert before[0] > 0


def test_without_a_plan_the_shipped_plan_loads_and_says_so(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in SETTING_NAMES}
    script = (
        "import migration_assets.definitions as d\n"
        "graph = d.defs.resolve_asset_graph()\n"
        "for key in graph.get_all_asset_keys():\n"
        "    node = graph.get(key)\n"
        "    print(key.to_user_string(), '|', node.description.splitlines()[0], '|',"
        " node.metadata.get('plan'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,  # no .env here
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("public/patients |") for line in lines)
    assert len(lines) > 5
    for line in lines:
        _, first, plan = line.split(" | ")
        assert first.startswith("Plan: the shipped plan for this repo's own schema"), line
        assert "MIGRATION_PLAN is not set" in first
        assert plan.startswith("shipped: demo.json"), line
    assert "MIGRATION_PLAN is not set" in done.stderr, "a warning is logged when loading"


@pytest.mark.integration
def test_the_shipped_plan_matches_the_alembic_schema(databases: Databases) -> None:
    """plans/demo.json is what `plan` writes for this repo's own schema (head revision)."""
    shipped = load_plan(REPO_ROOT / "migration_assets" / "plans" / "demo.json")
    with psycopg.connect(databases.source()) as conn:
        fresh = build_plan(conn, source_dsn="postgresql://localhost/clinic")

    def shape(plan: Any) -> dict[str, Any]:
        return {
            t.qualified: (t.key, [(c.name, c.type, c.generated) for c in t.columns], t.slicing.key)
            for t in plan.tables
        }

    assert shape(shipped) == shape(fresh)
    assert [s.qualified for s in shipped.sequences] == [s.qualified for s in fresh.sequences]
    assert shipped.enums == fresh.enums
