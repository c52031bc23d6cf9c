"""The migration against real servers: copy, verify, resume, resync, other schemas."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Engine

from migration_assets.db.dsn import parse_dsn
from migration_assets.db.left_out import LARGE_OBJECTS
from migration_assets.db.schema import alembic_upgrade
from migration_assets.defs.keys import SLICE_CHECKSUM, SLICE_ROW_COUNT
from migration_assets.devstack.binaries import pg_bin_dir
from migration_assets.devstack.shape import dagster_yaml
from migration_assets.devstack.stack import DevStack
from migration_assets.plan import WHOLE_TABLE_KEY, load_plan
from migration_assets_tests.conftest import (
    ALEMBIC_INI,
    Databases,
    Migration,
    MigrationFactory,
    unique,
)
from migration_assets_tests.faults import refuse_copy, slow_down, speed_up
from migration_assets_tests.helpers import (
    PLAN_ARGS,
    assert_equal_databases,
    cli_process,
    open_first,
    row_locations,
    run_cli,
)
from migration_assets_tests.waiting import process_gone, wait_until

pytestmark = pytest.mark.integration


def _plan(m: Migration, *extra: str) -> None:
    code, output = run_cli(["plan", "--out", str(m.plan_path), *PLAN_ARGS, *extra])
    assert code == 0, output


def _migrate(*extra: str) -> tuple[int, str]:
    return run_cli(["migrate", "--workers", "1", *extra])


def test_migrate_copies_everything_verified(migration: MigrationFactory) -> None:
    m = migration()
    _plan(m)
    plan = load_plan(m.plan_path)
    assert plan.total_partitions() > len(plan.tables), "the test needs several slices per table"
    code, output = _migrate()
    assert code == 0, output
    assert "every partition verified" in output
    digests = assert_equal_databases(m.source_url, m.target_url)
    assert digests["public.patients"][0] > 0
    with psycopg.connect(m.target_url) as conn:
        assert conn.execute(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
        ).fetchone() == (False,)
        rls = conn.execute(
            "SELECT count(*) FILTER (WHERE NOT relrowsecurity) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.relname <> 'alembic_version'"
        ).fetchone()
        anon = conn.execute(
            "SELECT count(*) FROM information_schema.role_table_grants "
            "WHERE grantee IN ('anon', 'authenticated') AND table_schema = 'public' "
            "AND table_name <> 'alembic_version'"
        ).fetchone()
    assert rls == (0,), "every public table must have RLS on after the schema step"
    assert anon == (0,), "anon/authenticated must hold no grants on migrated tables"
    code, output = run_cli(["status"])
    assert code == 0, output
    assert "0" in output


def test_second_migrate_changes_nothing_and_force_recopies(migration: MigrationFactory) -> None:
    m = migration()
    _plan(m)
    assert _migrate()[0] == 0
    table = ("public", "observations")
    before = row_locations(m.target_url, table)
    code, output = _migrate()
    assert code == 0, output
    assert "0 partition(s) copied" in output
    assert row_locations(m.target_url, table) == before, "a no-op migrate rewrote rows"
    code, output = _migrate("--force")
    assert code == 0, output
    assert row_locations(m.target_url, table) != before, "--force must re-copy"
    assert_equal_databases(m.source_url, m.target_url)


def test_a_slice_that_fails_verification_is_failed_and_redone(
    migration: MigrationFactory,
) -> None:
    m = migration()
    _plan(m)
    assert _migrate()[0] == 0
    with psycopg.connect(m.target_url, autocommit=True) as conn:
        # An ALWAYS trigger fires even in replica mode: it corrupts what we copy.
        conn.execute(
            "CREATE FUNCTION corrupt() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "NEW.unit := coalesce(NEW.unit, '') || '!'; RETURN NEW; END $$;"
            "CREATE TRIGGER corrupt BEFORE INSERT ON observations "
            "FOR EACH ROW EXECUTE FUNCTION corrupt();"
            "ALTER TABLE observations ENABLE ALWAYS TRIGGER corrupt;"
        )
    before = row_locations(m.target_url, ("public", "observations"))
    code, output = _migrate("--force")
    assert code == 1, output
    assert "did not verify" in output, output
    assert "FAILED" in output
    assert row_locations(m.target_url, ("public", "observations")) == before, "not rolled back"
    plan = load_plan(m.plan_path)
    observations = plan.table("public.observations")
    code, _status = run_cli(["status"])
    assert code == 1
    with psycopg.connect(m.target_url, autocommit=True) as conn:
        conn.execute("DROP TRIGGER corrupt ON observations")
    code, output = _migrate()
    assert code == 0, output
    assert f"{observations.slicing.partitions} partition(s) copied" in output
    assert_equal_databases(m.source_url, m.target_url)


def test_resync_recopies_only_the_slices_that_changed(migration: MigrationFactory) -> None:
    m = migration()
    _plan(m)
    assert _migrate()[0] == 0
    with psycopg.connect(m.source_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE observations SET value_text = 'amended' "
            "WHERE id = (SELECT min(id) FROM observations)"
        )
        conn.execute(
            "DELETE FROM prescriptions WHERE (encounter_id, line_no) = "
            "(SELECT encounter_id, line_no FROM prescriptions ORDER BY 1, 2 LIMIT 1)"
        )
        conn.execute(
            "INSERT INTO providers (id, npi, full_name, specialty, created_at, updated_at) "
            "VALUES (999999, '9999999999', 'New Provider', 'Cardiology', now(), now())"
        )
    code, output = _migrate("--resync")
    assert code == 0, output
    assert "resync: 3 of" in output, output
    assert "re-copied 3" in output
    assert_equal_databases(m.source_url, m.target_url)


def test_sigkill_mid_run_then_resume_redoes_only_unverified(
    migration: MigrationFactory, isolated_cwd: Path
) -> None:
    m = migration()
    _plan(m, "--rows-per-partition", "150", "--min-partitions", "6")
    plan = load_plan(m.plan_path)
    total = plan.total_partitions()
    instance = open_first(m.dagster_home)
    proc = cli_process(["migrate", "--workers", "1"], m.env(), isolated_cwd)

    def four_done() -> bool:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        return _materialized(instance, plan) >= 4

    wait_until(four_done, 120, "4 partitions verified", every=0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    process_gone(proc, 30)
    verified_before = _materialized(instance, plan)
    assert 4 <= verified_before < total, "the kill must land mid-run"
    code, output = _migrate()
    assert code == 0, output
    assert f"{total - verified_before} partition(s) copied" in output
    assert f"{verified_before} already verified" in output
    assert_equal_databases(m.source_url, m.target_url)


def _materialized(instance: dg.DagsterInstance, plan: object) -> int:
    from migration_assets.plan import MigrationPlan

    assert isinstance(plan, MigrationPlan)
    count = 0
    for table in plan.tables:
        statuses = (
            instance.get_status_by_partition(
                dg.AssetKey(table.asset_path),
                table.partition_keys,
                dg.StaticPartitionsDefinition(table.partition_keys),
            )
            or {}
        )
        count += sum(1 for s in statuses.values() if s is not None and s.value == "MATERIALIZED")
    return count


FOREIGN_SCHEMA = """
CREATE SCHEMA "Billing";
CREATE TYPE "Billing"."Status" AS ENUM ('open', 'paid', 'void');
CREATE TABLE "Billing"."Invoice Lines" (
    "Id" bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    "select" text NOT NULL,
    "Amount" numeric(12, 2),
    status "Billing"."Status",
    "from" timestamptz,
    tags text[],
    blob bytea,
    doc jsonb,
    ratio double precision,
    total numeric GENERATED ALWAYS AS ("Amount" * 2) STORED
);
CREATE TABLE "Billing".events (happened date, what text);
CREATE TABLE "Billing".empty_one (k uuid PRIMARY KEY);
"""

FOREIGN_ROWS = """
INSERT INTO "Billing"."Invoice Lines" ("select", "Amount", status, "from", tags, blob, doc, ratio)
SELECT 'line ' || i || ' «ünïcode» "quoted"', i * 1.25,
       (ARRAY['open', 'paid', 'void'])[1 + i % 3]::"Billing"."Status",
       timestamptz '2020-02-29 12:00+05' + i * interval '1 hour',
       CASE WHEN i % 5 = 0 THEN NULL ELSE ARRAY['a,b', 'c"d', NULL] END,
       CASE WHEN i % 4 = 0 THEN NULL ELSE decode(md5(i::text), 'hex') END,
       jsonb_build_object('i', i, 'nested', jsonb_build_array(1, 'x', NULL)),
       CASE i % 7 WHEN 0 THEN 'NaN'::float8 WHEN 1 THEN '-Infinity' ELSE i / 3.0 END
FROM generate_series(1, 1500) i;
INSERT INTO "Billing".events SELECT date '1999-12-31' + i, CASE WHEN i % 2 = 0 THEN 'x' END
FROM generate_series(1, 700) i;
INSERT INTO "Billing".events SELECT date '2000-01-01', 'dup' FROM generate_series(1, 5);
"""


def test_existing_schema_mode_migrates_a_database_alembic_never_saw(
    migration: MigrationFactory, databases: Databases, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = databases.source(seeded=False)
    target = databases.target()
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(FOREIGN_SCHEMA)
        conn.execute(FOREIGN_ROWS)
        conn.execute("ANALYZE")
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute(FOREIGN_SCHEMA)
    m = migration(source_url=source, target_url=target)
    monkeypatch.setenv("MIGRATION_SCHEMA_MODE", "existing")
    _plan(m)
    plan = load_plan(m.plan_path)
    names = {t.qualified: t for t in plan.tables}
    assert set(names) == {"Billing.Invoice Lines", "Billing.events", "Billing.empty_one"}
    assert names["Billing.events"].key == [], "a table without a key is planned, not skipped"
    code, output = _migrate()
    assert code == 0, output
    assert_equal_databases(source, target, schemas=["Billing"])


def test_pg_dump_schema_mode(
    migration: MigrationFactory, databases: Databases, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = databases.source(seeded=False)
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(FOREIGN_SCHEMA)
        conn.execute(FOREIGN_ROWS)
    m = migration(source_url=source)
    monkeypatch.setenv("MIGRATION_SCHEMA_MODE", "pg_dump")
    _plan(m)
    code, output = _migrate()
    assert code == 0, output
    assert_equal_databases(source, m.target_url, schemas=["Billing"])


def test_plan_leaves_supabase_schemas_alone(migration: MigrationFactory) -> None:
    m = migration()
    with psycopg.connect(m.source_url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA auth; CREATE TABLE auth.users (id int PRIMARY KEY)")
        conn.execute("CREATE SCHEMA storage; CREATE TABLE storage.objects (id int)")
        conn.execute("CREATE MATERIALIZED VIEW patient_count AS SELECT count(*) FROM patients")
        conn.execute("SELECT lo_from_bytea(0, 'a scanned consent form')")  # in no table
    code, output = run_cli(["plan", "--out", str(m.plan_path), *PLAN_ARGS])
    assert code == 0, output
    data = json.loads(m.plan_path.read_text())
    schemas = {t["schema"] for t in data["tables"]}
    assert schemas == {"public", "reference"}
    assert "public.patient_count" in data["skipped"]
    assert "public.alembic_version" in data["skipped"]
    # an app's own tables in a schema Supabase manages cannot go there: named, with the way out
    assert "ALTER SCHEMA auth RENAME TO" in data["skipped"]["auth.users"]
    assert "storage.objects: in schema storage, which Supabase manages" in output
    # data outside every table is named, never silently left behind
    assert data["skipped"][LARGE_OBJECTS].startswith("1 large object(s) are not copied")
    assert f"not copied: {LARGE_OBJECTS}" in output
    code, output = run_cli(["plan", "--out", str(m.plan_path), "--schema", "reference"])
    assert code == 0, output
    assert LARGE_OBJECTS in json.loads(m.plan_path.read_text())["skipped"], "in no schema"


def test_definitions_load_from_the_plan_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    committed = Path(__file__).resolve().parents[1] / "migration_assets" / "plans" / "demo.json"
    for name in ("SOURCE_DATABASE_URL", "SUPABASE_DB_URL", "DAGSTER_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MIGRATION_PLAN", str(committed))
    import migration_assets.definitions as module

    defs = importlib.reload(module).defs
    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {
        "supabase_schema",
        "supabase_sequences",
        "public/patients",
        "reference/code_aliases",
    } <= keys


@pytest.mark.parametrize("older", ["target", "source"])
def test_cross_version_copy_uses_text_format(
    older: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL 15 (Debian's) on one side and 18 (the wheel's) on the other, both ways: a
    clinic's older server into a newer Supabase is the common case. The schema comes by
    pg_dump, the newcomer's mode: tables in `public`, which the target has (pg_dump 18
    writes CREATE SCHEMA public from either source), and `extensions`, as Supabase has."""
    other = Path("/usr/lib/postgresql/15/bin")
    if not (other / "postgres").exists():
        if os.environ.get("MIGRATION_ASSETS_CI"):
            pytest.fail("CI must provide PostgreSQL 15 (apt-get install postgresql-15)")
        pytest.skip("PostgreSQL 15 is not installed here")
    from migration_assets.cli.demo import prepare_source

    monkeypatch.chdir(tmp_path)
    wheel = pg_bin_dir(None)  # the target would otherwise follow the source's binaries
    source_bin, target_bin = (wheel, other) if older == "target" else (other, wheel)
    with DevStack(source_bin=source_bin, target_bin=target_bin) as stack:
        assert stack.source is not None
        assert stack.target is not None
        versions = {"source": stack.source.version, "target": stack.target.version}
        assert versions[older] == 15
        assert max(versions.values()) > 15
        prepare_source(stack, patients=60, seed=5)
        for key, value in stack.env().items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("MIGRATION_PLAN", str(tmp_path / "plan.json"))
        monkeypatch.setenv("MIGRATION_SCHEMA_MODE", "pg_dump")
        with psycopg.connect(stack.target_url) as conn:
            have = conn.execute(
                "SELECT count(*) FROM pg_namespace WHERE nspname IN ('public', 'extensions')"
            ).fetchone()
        assert have == (2,)
        code, output = run_cli(["plan", "--out", str(tmp_path / "plan.json")])
        assert code == 0, output
        code, output = _migrate()
        assert code == 0, output
        assert_equal_databases(stack.source_url, stack.target_url)
        assert run_cli(["verify"])[0] == 0  # alembic_version too: the target is at 0004
        instance = dg.DagsterInstance.get()
        event = instance.get_latest_materialization_event(dg.AssetKey(["public", "patients"]))
        assert event is not None
        assert event.asset_materialization is not None
        meta = event.asset_materialization.metadata
        assert {k: getattr(meta[k], "value", meta[k]) for k in ("copy_format", "row_hash")} == {
            "copy_format": "text",
            "row_hash": "native",  # PostgreSQL 18 and 15 hash rows alike: it verified
        }


def _index_definitions(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE schemaname IN ('public', 'reference')"
        ).fetchall()
    return {str(r[0]) for r in rows}


def test_a_cold_load_builds_secondary_indexes_once_after(
    migration: MigrationFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MIGRATION_DEFER_INDEXES_ABOVE", "1")
    m = migration()
    _plan(m)
    code, output = _migrate()
    assert code == 0, output
    assert "secondary index(es) were built after the load" in output
    assert _index_definitions(m.target_url) == _index_definitions(m.source_url)
    with psycopg.connect(m.target_url) as conn:
        state = conn.execute("SELECT to_regnamespace('migration_assets_state')").fetchone()
    assert state == (None,), "nothing of ours may stay behind on the target"
    assert run_cli(["verify"])[0] == 0
    assert_equal_databases(m.source_url, m.target_url)


def test_a_replanned_table_needs_exactly_its_changed_slices(migration: MigrationFactory) -> None:
    """Moving one bound of one table changes the meaning of the two slices beside it: those
    two (new keys) are missing in Dagster and in `status`, and `migrate` redoes only them."""
    m = migration()
    _plan(m)
    assert _migrate()[0] == 0
    raw = json.loads(m.plan_path.read_text())
    table = next(
        t
        for t in raw["tables"]
        if t["slicing"].get("key_type") in ("integer", "bigint")
        and len(t["slicing"]["bounds"]) >= 2
    )
    name, slicing = f"{table['schema']}.{table['name']}", table["slicing"]
    before = load_plan(m.plan_path).table(name).partition_keys
    slicing["bounds"][0] = str(int(slicing["bounds"][0]) + 7)
    m.plan_path.write_text(json.dumps(raw))
    plan = load_plan(m.plan_path)
    after = plan.table(name).partition_keys
    changed = [k for k in after if k not in before]
    assert [k.split("-")[0] for k in changed] == ["000", "001"], (before, after)

    instance = dg.DagsterInstance.from_config(str(m.dagster_home))
    assert _materialized(instance, plan) == plan.total_partitions() - 2
    code, output = run_cli(["status"])
    assert code == 1, output
    row = next(line for line in output.splitlines() if "/".join(name.split(".")) in line)
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    assert cells[1:5] == [str(len(after) - 2), "0", "2", "0"], row  # materialized..missing

    code, output = _migrate()
    assert code == 0, output
    assert "2 partition(s) copied" in output, output
    assert f"{plan.total_partitions() - 2} already verified" in output, output
    assert _materialized(instance, plan) == plan.total_partitions()
    assert_equal_databases(m.source_url, m.target_url)


def test_migrate_never_holds_more_target_connections_than_the_setting(
    migration: MigrationFactory, stack: DevStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MIGRATION_TARGET_CONNECTIONS=2 with 4 workers asked for: pg_stat_activity, sampled
    all through a cold migrate (schema, slices, indexes, sequences, checks), never shows 3."""
    monkeypatch.setenv("MIGRATION_TARGET_CONNECTIONS", "2")
    m = migration()
    _plan(m, "--rows-per-partition", "150", "--min-partitions", "4")
    # The largest slice goes first to migrate's own process; slowed, it is still copying when
    # the spawned worker has imported Dagster and takes the next: both copy at once.
    alembic_upgrade(m.target_url, sslrootcert=str(m.ca_file), config_path=ALEMBIC_INI)
    slow_down(m.target_url, "public.observations", 0.01)
    assert stack.target is not None
    dbname = parse_dsn(m.target_url)["dbname"]
    admin = stack.target.admin_conninfo(dbname)
    samples: list[int] = []
    done = threading.Event()

    def sample() -> None:
        with psycopg.connect(admin, autocommit=True) as conn:
            while not done.is_set():
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                    "AND application_name = 'migration_assets'",
                    [dbname],
                ).fetchone()
                samples.append(int(row[0]) if row else 0)
                time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        code, output = run_cli(["migrate", "--workers", "4"])
    finally:
        done.set()
        sampler.join(timeout=10)
    assert code == 0, output
    assert len(samples) > 50, "the sampler barely ran"
    assert max(samples) <= 2, f"peak {max(samples)} connections, limit 2"
    assert max(samples) == 2, "two workers never copied at once: the limit was not exercised"
    assert_equal_databases(m.source_url, m.target_url)


def test_small_tables_share_a_run_and_each_keeps_its_own_status(
    migration: MigrationFactory,
) -> None:
    """Every table is one slice: one run copies them all, yet a table that fails is FAILED
    alone (the others verified), and the next migrate redoes only it."""
    m = migration()
    _plan(m, "--split-above", "1000000000")
    plan = load_plan(m.plan_path)
    assert {k for t in plan.tables for k in t.partition_keys} == {WHOLE_TABLE_KEY}
    alembic_upgrade(m.target_url, sslrootcert=str(m.ca_file), config_path=ALEMBIC_INI)
    victim = next(t for t in plan.tables if t.name == "encounters")
    refuse_copy(m.target_url, victim.qualified)

    code, output = _migrate()
    assert code == 1, output
    assert f"FAILED {victim.qualified} {WHOLE_TABLE_KEY}" in output, output
    assert f"{len(plan.tables) - 1} partition(s) copied and verified, 1 failed" in output, output
    instance = dg.DagsterInstance.from_config(str(m.dagster_home))
    carried = instance.get_run_records(
        filters=dg.RunsFilter(tags={"dagster/partition": WHOLE_TABLE_KEY})
    )
    assert len(carried) == 1, "the small tables did not share one run"
    planned = instance.all_logs(
        carried[0].dagster_run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED
    )
    names = {e.get_dagster_event().asset_check_planned_data.check_name for e in planned}
    # each slice's own checks, not the whole-table ones that only `verify` can judge
    assert names == {SLICE_ROW_COUNT, SLICE_CHECKSUM}, names
    assert len(planned) == 2 * len(plan.tables)
    statuses = {
        t.qualified: instance.get_status_by_partition(
            dg.AssetKey(t.asset_path),
            [WHOLE_TABLE_KEY],
            dg.StaticPartitionsDefinition([WHOLE_TABLE_KEY]),
        )
        for t in plan.tables
    }
    assert {q: str(s[WHOLE_TABLE_KEY]) for q, s in statuses.items() if s} == {
        t.qualified: "AssetPartitionStatus.FAILED"
        if t is victim
        else "AssetPartitionStatus.MATERIALIZED"
        for t in plan.tables
    }

    speed_up(m.target_url, victim.qualified)
    code, output = _migrate()
    assert code == 0, output
    assert f"1 partition(s) copied and verified, 0 failed, {len(plan.tables) - 1} already" in (
        output
    ), output
    assert_equal_databases(m.source_url, m.target_url)


def test_a_migrate_asks_the_dagster_storage_each_schema_question_once(
    migration: MigrationFactory, stack: DevStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL storage, Dagster asks the catalog whether its own tables and columns
    exist on almost every event (about 250 times in this re-run), and opens a second
    connection for each materialization to do it. A migrate remembers each "yes", so a
    question is asked once per storage (Dagster's run, event and schedule storages each list
    the tables when they open), however many slices it copies and checks."""
    assert stack.dagster is not None
    m = migration()
    dagster_db = unique("dagster_probes")
    stack.dagster.admin(f'CREATE DATABASE "{dagster_db}" OWNER dagster')
    (m.dagster_home / "dagster.yaml").write_text(
        dagster_yaml(port=stack.dagster.port, db=dagster_db, target_connections=2)
    )
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", stack.passwords["dagster"])
    _plan(m, "--split-above", "1000000000")
    code, output = run_cli(["migrate", "--workers", "1"])
    assert code == 0, output

    with storage_traffic(dagster_db) as traffic:
        code, output = run_cli(["migrate", "--workers", "1", "--force"])
    assert code == 0, output
    assert "partition(s) copied" in output, output
    assert traffic.statements > 100, "the re-run wrote no events: nothing was measured"
    asked = collections.Counter(traffic.reflections)
    question, times = asked.most_common(1)[0]
    assert times <= 3, f"asked {times} times: {question[-160:]}"


@dataclass
class StorageTraffic:
    statements: int = 0
    reflections: list[str] = field(default_factory=list)


@contextlib.contextmanager
def storage_traffic(dbname: str) -> Iterator[StorageTraffic]:
    """Every statement of any SQLAlchemy engine on `dbname` (Dagster's storage) in this
    process while the block runs; catalog queries with their parameters."""
    traffic = StorageTraffic()

    def on_statement(conn: Any, cursor: Any, statement: str, params: Any, *args: Any) -> None:
        if conn.engine.url.database == dbname:
            traffic.statements += 1
            if "pg_catalog" in statement or "information_schema" in statement:
                traffic.reflections.append(f"{' '.join(statement.split())} {params}")

    sa_event.listen(Engine, "before_cursor_execute", on_statement)
    try:
        yield traffic
    finally:
        sa_event.remove(Engine, "before_cursor_execute", on_statement)


def _migrate_process(m: Migration, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`migrate` as users start it (the console script's entry), starting workers."""
    return subprocess.run(
        [sys.executable, "-m", "migration_assets.cli", "migrate", "--workers", "2"],
        env={**os.environ, **m.env(), **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_a_migrate_with_workers_says_nothing_after_its_summary(
    migration: MigrationFactory, isolated_cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Failed or verified, a run's stderr holds its progress and what it says on purpose,
    then nothing: no interpreter noise (leaked-semaphore warnings) after the exit."""
    m = migration()
    _plan(m)
    failed = _migrate_process(m, isolated_cwd, MIGRATION_SCHEMA_MODE="existing")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    with monkeypatch.context() as mp:  # the same failure in this process: the same words
        mp.setenv("MIGRATION_SCHEMA_MODE", "existing")
        again = _migrate()[1]
    header = "preflight or schema step failed; no data was copied.\n"
    assert header in failed.stderr
    assert failed.stderr.split(header)[1] == again.split(header)[1]
    done = _migrate_process(m, isolated_cwd)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "every partition verified" in done.stdout
    progress = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert progress, "the progress bar is drawn on stderr"
    assert all(ln.startswith("migrate ") for ln in progress), done.stderr
