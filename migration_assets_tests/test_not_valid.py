"""NOT VALID constraints arrive as they are; extensions' configuration rows are named.

A NOT VALID CHECK (a rule added later without validating history) still binds new rows, so
COPY of the old rows that break it fails. The schema step records and drops such constraints
after the schema is applied, `supabase_indexes` adds them back, still NOT VALID. A foreign
key does not fire under `session_replication_role = replica`: it stays, and its orphans
arrive as they are on the source.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from migration_assets.db.catalog import Catalog, ColumnInfo, TableInfo, read_catalog
from migration_assets.db.dsn import parse_dsn
from migration_assets.db.schema_diff import compare_catalogs, without_constraints
from migration_assets.devstack.stack import SOURCE_ROLE, DevStack
from migration_assets.engine.session import Session
from migration_assets.engine.work import RunSpec
from migration_assets.settings import load_settings
from migration_assets_tests.conftest import Databases, MigrationFactory
from migration_assets_tests.faults import slow_down, speed_up, wait_for_copy
from migration_assets_tests.helpers import (
    assert_equal_databases,
    cli_process,
    migrated_and_verified,
    run_cli,
)

DDL = """
CREATE SCHEMA ward;
CREATE TABLE ward.ward (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE ward.bed (id int PRIMARY KEY, ward_id int, beds int, label text);
"""
ROWS = """
INSERT INTO ward.ward VALUES (1, 'east'), (2, 'west');
INSERT INTO ward.bed SELECT i, 1 + i % 2, 1 + i % 4, 'bed ' || i FROM generate_series(1, 30) i;
INSERT INTO ward.bed VALUES (31, 99, 2, 'moved'), (32, 1, -1, 'closed'), (33, 2, 3, NULL);
"""
# Rules added later, the old rows left as they were: 31 has no ward, 32 negative beds, 33 no
# label. PostgreSQL 18 has NOT VALID NOT NULL constraints too.
CONSTRAINTS = """
ALTER TABLE ward.bed ADD CONSTRAINT bed_ward FOREIGN KEY (ward_id) REFERENCES ward.ward
    NOT VALID;
ALTER TABLE ward.bed ADD CONSTRAINT bed_beds_positive CHECK (beds > 0) NOT VALID;
ALTER TABLE ward.bed ADD CONSTRAINT bed_label_present NOT NULL label NOT VALID;
"""
DEFERRED = [("bed_beds_positive",), ("bed_label_present",)]  # the FK does not fire: it stays

CONSTRAINT_STATE = """
SELECT conrelid::regclass::text, conname, contype::text, convalidated,
       pg_get_constraintdef(oid)
FROM pg_constraint WHERE connamespace = 'ward'::regnamespace ORDER BY 1, 2
"""


def _constraints(url: str) -> list[tuple[str, str, str, bool, str]]:
    with psycopg.connect(url) as conn:
        return [(a, b, c, d, e) for a, b, c, d, e in conn.execute(CONSTRAINT_STATE)]


def _not_valid(url: str) -> list[str]:
    return sorted(name for _, name, _, valid, _ in _constraints(url) if not valid)


def _state_schema(url: str) -> str | None:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT to_regnamespace('migration_assets_state')::text").fetchone()
    return row[0] if row else None


def _source(databases: Databases, mode: str, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """(source, target) with the rule-breaking rows; the target's schema is made in
    `existing` mode, by the schema step in `pg_dump` mode."""
    if mode == "existing":
        source, target = databases.existing_pair(DDL, ROWS, monkeypatch)
        for url in (source, target):
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(CONSTRAINTS)
        return source, target
    source = databases.source(seeded=False)
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(DDL)
        conn.execute(ROWS)
        conn.execute(CONSTRAINTS)
    monkeypatch.setenv("MIGRATION_SCHEMA_MODE", mode)
    return source, databases.target()


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["existing", "pg_dump"])
def test_rows_that_break_not_valid_constraints_arrive_and_the_constraints_stay_not_valid(
    mode: str,
    migration: MigrationFactory,
    databases: Databases,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source, target = _source(databases, mode, monkeypatch)
    assert _not_valid(source) == ["bed_beds_positive", "bed_label_present", "bed_ward"]
    m = migration(source_url=source, target_url=target)
    migrated_and_verified(m.plan_path, "--schema", "ward")
    counts = assert_equal_databases(source, target, schemas=["ward"])
    assert counts["ward.bed"][0] == 33, "the rows that break the rules arrive too"
    assert _constraints(target) == _constraints(source), "as on the source, still NOT VALID"
    assert _state_schema(target) is None, "nothing left on record"
    if mode == "existing":  # once is enough: the slice's own handling, any schema mode
        _one_partition_alone(m.plan_path, "ward.bed")
        assert _constraints(target) == _constraints(source), "back in the same transaction"
        assert assert_equal_databases(source, target, schemas=["ward"]) == counts


def _one_partition_alone(plan_path: Path, table: str) -> None:
    """A run of one partition and nothing before it, as a UI backfill of one table's failed
    partitions makes after the constraints came back: its load must hold them itself."""
    session = Session.open(load_settings(env_file=None), plan_path)
    planned = session.plan.table(table)
    key = dg.AssetKey(planned.asset_path)
    spec = RunSpec(table, (key,), planned.partition_keys[0], table=table, force=True)
    outcome = session.execute(spec)
    assert outcome.ok, outcome.message
    assert outcome.rows == 33, "re-copied, not left as it was"


@pytest.mark.integration
@pytest.mark.slow
def test_a_run_killed_before_the_constraints_return_leaves_them_on_record(
    migration: MigrationFactory,
    databases: Databases,
    stack: DevStack,
    isolated_cwd: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Killed while a slice loads (the constraints dropped, not yet back): the record on the
    target says what to add back, and the next `migrate` does."""
    source, target = _source(databases, "existing", monkeypatch)
    m = migration(source_url=source, target_url=target)
    code, output = run_cli(["plan", "--out", str(m.plan_path), "--schema", "ward"])
    assert code == 0, output
    slow_down(target, "ward.bed", 0.25)  # 33 rows: the COPY takes about 8 s
    proc = cli_process(["migrate", "--workers", "1"], m.env(), isolated_cwd)
    assert stack.target is not None
    wait_for_copy(stack.target.admin_conninfo(), parse_dsn(target)["dbname"], into="ward.bed")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    with psycopg.connect(target) as conn:
        recorded = conn.execute(
            "SELECT constraint_name FROM migration_assets_state.deferred_constraints ORDER BY 1"
        ).fetchall()
    assert recorded == DEFERRED, "the dropped constraints must be on record"
    assert _not_valid(target) == ["bed_ward"], "dropped for the load"
    speed_up(target, "ward.bed")
    code, output = run_cli(["migrate", "--workers", "1"])
    assert code == 0, output
    assert _constraints(target) == _constraints(source)
    assert _state_schema(target) is None
    assert_equal_databases(source, target, schemas=["ward"])
    code, output = run_cli(["verify"])
    assert code == 0, output


@pytest.mark.integration
def test_validity_is_part_of_a_constraint(databases: Databases) -> None:
    """A constraint VALID on one side and NOT VALID on the other differs (CHECK, and
    PostgreSQL 18's NOT NULL, whose column is NOT NULL either way)."""
    source, target = databases.source(seeded=False), databases.target()
    valid = CONSTRAINTS.replace("NOT VALID", "")  # validated at once: no rows here
    for url, constraints in ((source, CONSTRAINTS), (target, valid)):
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(DDL)
            conn.execute(constraints)
    with psycopg.connect(source) as src, psycopg.connect(target) as tgt:
        found = [
            str(d) for d in compare_catalogs(read_catalog(src), read_catalog(tgt), ["ward.bed"])
        ]
    assert (
        "ward.bed: constraint bed_beds_positive differs: 'CHECK ((beds > 0)) NOT VALID' "
        "on the source, 'CHECK ((beds > 0))' on the target" in found
    ), found
    # the target's NOT NULL is VALID: only a NOT VALID one is read as a constraint of its own
    assert "ward.bed: constraint bed_label_present missing on the target" in found, found
    assert any(d.startswith("ward.bed: constraint bed_ward differs") for d in found), found


def _bed(constraints: dict[str, str], label_not_null: bool) -> Catalog:
    info = TableInfo(1, "ward", "bed", "r", 0, 0)
    info.columns = [
        ColumnInfo("id", "integer", True, False, "", True),
        ColumnInfo("label", "text", label_not_null, False, "", True),
    ]
    info.constraints = constraints
    return Catalog(180000, {"ward.bed": info}, [], {}, {})


@pytest.mark.unit
def test_deferred_constraints_are_accepted_as_absent_only_while_recorded() -> None:
    check = {"bed_beds_positive": "CHECK ((beds > 0)) NOT VALID"}
    label = {"bed_label_present": "NOT NULL label NOT VALID"}
    source = _bed({**check, **label}, label_not_null=True)
    dropped = _bed({}, label_not_null=False)  # what the load sees
    recorded = [
        ("ward.bed", "bed_beds_positive", check["bed_beds_positive"], None),
        ("ward.bed", "bed_label_present", label["bed_label_present"], "label"),
    ]
    assert compare_catalogs(without_constraints(source, recorded), dropped, ["ward.bed"]) == []
    found = [str(d) for d in compare_catalogs(source, dropped, ["ward.bed"])]
    assert "ward.bed: constraint bed_beds_positive missing on the target" in found
    assert "ward.bed: column label is NOT NULL on the source, nullable on the target" in found
    one = compare_catalogs(without_constraints(source, recorded[:1]), dropped, ["ward.bed"])
    assert [str(d) for d in one] == [
        "ward.bed: column label is NOT NULL on the source, nullable on the target",
        "ward.bed: constraint bed_label_present missing on the target",
    ]
    # the target recorded a NOT VALID one; the source's is VALID: that still differs
    valid = _bed({"bed_beds_positive": "CHECK ((beds > 0))"}, label_not_null=False)
    still = compare_catalogs(without_constraints(valid, recorded), dropped, ["ward.bed"])
    assert [str(d) for d in still] == [
        "ward.bed: constraint bed_beds_positive missing on the target"
    ]
    assert source.tables["ward.bed"].constraints == {**check, **label}, "not changed in place"


# ------------------------------------------------ extensions' configuration tables

EXTENSION = "ma_test_site_settings"
CONTROL = """comment = 'test: an extension with configuration tables'
default_version = '1.0'
relocatable = false
"""
# Rows the extension ships are marked; pg_dump copies only the others (the condition).
SCRIPT = """
CREATE TABLE @extschema@.site_settings (
    key text PRIMARY KEY, value text, shipped boolean NOT NULL DEFAULT false);
INSERT INTO @extschema@.site_settings VALUES ('theme', 'plain', true);
SELECT pg_catalog.pg_extension_config_dump('@extschema@.site_settings', 'WHERE NOT shipped');
CREATE TABLE @extschema@.defaults (
    key text PRIMARY KEY, value text, shipped boolean NOT NULL DEFAULT true);
INSERT INTO @extschema@.defaults VALUES ('locale', 'C', true);
SELECT pg_catalog.pg_extension_config_dump('@extschema@.defaults', 'WHERE NOT shipped');
CREATE TABLE @extschema@.api_keys (name text PRIMARY KEY);
SELECT pg_catalog.pg_extension_config_dump('@extschema@.api_keys', '');
"""


@pytest.fixture
def extension(stack: DevStack) -> Iterator[str]:
    """A tiny extension with two configuration tables, installed into the source server's
    share directory (no contrib extension PostgreSQL 18 ships has one)."""
    assert stack.source is not None
    share = stack.source.bin_dir.parent / "share" / "extension"
    files = [share / f"{EXTENSION}.control", share / f"{EXTENSION}--1.0.sql"]
    for path, text in zip(files, (CONTROL, SCRIPT), strict=True):
        path.write_text(text)
        path.chmod(0o644)
    try:
        yield EXTENSION
    finally:
        for path in files:
            path.unlink(missing_ok=True)


@pytest.mark.integration
def test_user_rows_of_an_extension_configuration_table_are_named_not_lost(
    extension: str,
    migration: MigrationFactory,
    databases: Databases,
    stack: DevStack,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    source, target = databases.existing_pair(
        "CREATE SCHEMA records; CREATE TABLE records.notes (id int PRIMARY KEY, body text)",
        "INSERT INTO records.notes SELECT i, 'note ' || i FROM generate_series(1, 20) i",
        monkeypatch,
    )
    assert stack.source is not None
    stack.source.admin(
        f"CREATE SCHEMA settings; CREATE EXTENSION {extension} SCHEMA settings; "
        "INSERT INTO settings.site_settings VALUES ('fax', 'a', false), ('logo', 'b', false); "
        f"GRANT USAGE ON SCHEMA settings TO {SOURCE_ROLE}; "
        f"GRANT SELECT ON ALL TABLES IN SCHEMA settings TO {SOURCE_ROLE}; "
        f"REVOKE SELECT ON settings.api_keys FROM {SOURCE_ROLE}",
        dbname=parse_dsn(source)["dbname"],
    )
    m = migration(source_url=source, target_url=target)
    # a schema selection that leaves the extension's schema out: it is listed all the same
    code, output = run_cli(["plan", "--out", str(m.plan_path), "--schema", "records"])
    assert code == 0, output
    assert "not copied: settings.site_settings" in output, output
    skipped = json.loads(m.plan_path.read_text())["skipped"]
    why = skipped["settings.site_settings"]
    assert f"configuration table of extension {extension}" in why
    assert "2 row(s)" in why, "counted with the extension's own condition (1 row is shipped)"
    assert f"CREATE EXTENSION {extension}" in why
    assert "pg_dump --data-only --table=settings.site_settings" in why
    assert "settings.defaults" not in skipped, "it holds only the rows the extension ships"
    unread = skipped["settings.api_keys"]  # whether it holds any cannot be ruled out
    assert unread.startswith(f"configuration table of extension {extension}: this role may")
    code, output = run_cli(["migrate", "--workers", "1"])
    assert code == 0, output
    report = json.loads((m.dagster_home / "audit" / "audit-0001.json").read_text())
    assert report["plan"]["not_copied"]["settings.site_settings"] == why
    markdown = (m.dagster_home / "audit" / "audit-0001.md").read_text()
    assert f"- settings.site_settings: {why}" in markdown
    assert_equal_databases(source, target, schemas=["records"])
