"""Declaratively partitioned tables: deferred indexes come back whole, the schema check
sees invalid and missing partition indexes."""

from __future__ import annotations

import dagster as dg
import psycopg
import pytest

from migration_assets.db.catalog import read_catalog
from migration_assets.db.schema_diff import compare_catalogs
from migration_assets.defs.keys import INDEXES_KEY
from migration_assets_tests.conftest import Databases, MigrationFactory
from migration_assets_tests.helpers import assert_equal_databases, run_cli

pytestmark = pytest.mark.integration

TABLE = "Visits.events"

# Two levels: events_2024 is itself partitioned. One index is built the way pg_dump
# restores it (ON ONLY, then partition indexes under their own names, attached), so its
# partitions' index names are not the ones PostgreSQL would choose.
TABLES = """
CREATE SCHEMA "Visits";
CREATE TABLE "Visits".events (
    id bigint NOT NULL, happened date NOT NULL, kind text NOT NULL, note text,
    PRIMARY KEY (id, happened, kind)
) PARTITION BY RANGE (happened);
CREATE TABLE "Visits".events_2023 PARTITION OF "Visits".events
    FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');
CREATE TABLE "Visits".events_2024 PARTITION OF "Visits".events
    FOR VALUES FROM ('2024-01-01') TO ('2025-01-01') PARTITION BY LIST (kind);
CREATE TABLE "Visits".events_2024_lab PARTITION OF "Visits".events_2024 FOR VALUES IN ('lab');
CREATE TABLE "Visits".events_2024_other PARTITION OF "Visits".events_2024 DEFAULT;
CREATE TABLE "Visits".events_rest PARTITION OF "Visits".events DEFAULT;
CREATE UNIQUE INDEX events_kind_id_key ON "Visits".events (kind, id, happened);
"""

KIND_INDEX = 'CREATE INDEX events_kind_idx ON "Visits".events (kind, happened)'
NOTE_INDEXES = """
CREATE INDEX events_note_idx ON ONLY "Visits".events (note);
CREATE INDEX "2023 notes" ON "Visits".events_2023 (note);
CREATE INDEX "2024 notes" ON ONLY "Visits".events_2024 (note);
CREATE INDEX "2024 lab notes" ON "Visits".events_2024_lab (note);
CREATE INDEX "2024 other notes" ON "Visits".events_2024_other (note);
CREATE INDEX "other notes" ON "Visits".events_rest (note);
ALTER INDEX "Visits".events_note_idx ATTACH PARTITION "Visits"."2023 notes";
ALTER INDEX "Visits"."2024 notes" ATTACH PARTITION "Visits"."2024 lab notes";
ALTER INDEX "Visits"."2024 notes" ATTACH PARTITION "Visits"."2024 other notes";
ALTER INDEX "Visits".events_note_idx ATTACH PARTITION "Visits"."2024 notes";
ALTER INDEX "Visits".events_note_idx ATTACH PARTITION "Visits"."other notes";
"""

ROWS = """
INSERT INTO "Visits".events
SELECT i, date '2023-06-01' + (i % 900), (ARRAY['lab', 'visit', 'call'])[1 + i % 3],
       CASE WHEN i % 4 = 0 THEN NULL ELSE 'note ' || i END
FROM generate_series(1, 600) i;
ANALYZE "Visits".events;
"""

INDEX_STATE = """
SELECT c.relname, ic.relname, pg_get_indexdef(i.indexrelid), i.indisvalid,
       (SELECT p.relname FROM pg_inherits inh JOIN pg_class p ON p.oid = inh.inhparent
        WHERE inh.inhrelid = i.indexrelid)
FROM pg_index i
JOIN pg_class ic ON ic.oid = i.indexrelid
JOIN pg_class c ON c.oid = i.indrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'Visits'
ORDER BY 1, 2
"""


def _index_state(url: str) -> list[tuple[str, str, str, bool, str | None]]:
    """(table, index, definition, valid, index it is attached to) for every index."""
    with psycopg.connect(url) as conn:
        return [(a, b, c, d, e) for a, b, c, d, e in conn.execute(INDEX_STATE)]


def _partitioned_source(databases: Databases) -> str:
    source = databases.source(seeded=False)
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(TABLES)
        conn.execute(KIND_INDEX)
        conn.execute(NOTE_INDEXES)
        conn.execute(ROWS)
    return source


def _plan(m_plan: str, monkeypatch: pytest.MonkeyPatch, mode: str = "existing") -> None:
    monkeypatch.setenv("MIGRATION_SCHEMA_MODE", mode)
    code, output = run_cli(["plan", "--out", m_plan, "--rows-per-partition", "200"])
    assert code == 0, output


@pytest.mark.parametrize("mode", ["existing", "pg_dump"])
def test_deferred_indexes_of_a_partitioned_table_come_back_whole(
    mode: str,
    migration: MigrationFactory,
    databases: Databases,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MIGRATION_DEFER_INDEXES_ABOVE", "10")
    source = _partitioned_source(databases)
    target = databases.target()
    if mode == "existing":
        with psycopg.connect(target, autocommit=True) as conn:
            conn.execute(TABLES)
            conn.execute(KIND_INDEX)
            conn.execute(NOTE_INDEXES)
    m = migration(source_url=source, target_url=target)
    _plan(str(m.plan_path), monkeypatch, mode)
    code, output = run_cli(["migrate", "--workers", "2"])
    assert code == 0, output
    assert "2 secondary index(es) were built after the load" in output, output
    rebuilt = dg.DagsterInstance.from_config(str(m.dagster_home)).get_latest_materialization_event(
        INDEXES_KEY
    )
    assert rebuilt is not None
    assert rebuilt.asset_materialization is not None
    assert rebuilt.asset_materialization.metadata["indexes_rebuilt"].value == 2
    expected = _index_state(source)
    assert len(expected) == 4 * 6, "a primary key and 3 indexes on each of 6 relations"
    after = _index_state(target)
    assert [r for r in after if not r[3]] == [], "every index must be valid"
    assert after == expected, "same indexes, names, definitions and attachments as the source"
    with psycopg.connect(target) as conn:
        state = conn.execute("SELECT to_regnamespace('migration_assets_state')").fetchone()
    assert state == (None,)
    assert_equal_databases(source, target, schemas=["Visits"])
    code, output = run_cli(["verify"])
    assert code == 0, output


def test_schema_check_fails_on_invalid_or_missing_partition_indexes(
    migration: MigrationFactory, databases: Databases, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = _partitioned_source(databases)
    target = databases.target()
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute(TABLES)
        # what replaying pg_get_indexdef alone gives: the parent's index, invalid, no more
        conn.execute('CREATE INDEX events_kind_idx ON ONLY "Visits".events (kind, happened)')
        # and events_rest without its note index: events_note_idx stays invalid too
        conn.execute("\n".join(s for s in NOTE_INDEXES.splitlines() if "other notes" not in s))
    with psycopg.connect(source) as src, psycopg.connect(target) as tgt:
        found = [str(d) for d in compare_catalogs(read_catalog(src), read_catalog(tgt), [TABLE])]
    assert any("index events_kind_idx is invalid on the target" in d for d in found), found
    for partition in ("events_2023", "events_2024", "events_2024_lab", "events_rest"):
        missing = f"partition Visits.{partition} index events_kind_idx missing on the target"
        assert f"{TABLE}: {missing}" in found, found
    assert any("index events_note_idx is invalid on the target" in d for d in found), found
    missing = "partition Visits.events_rest index events_note_idx missing on the target"
    assert f"{TABLE}: {missing}" in found, found
    m = migration(source_url=source, target_url=target)
    _plan(str(m.plan_path), monkeypatch)
    code, output = run_cli(["migrate", "--workers", "1"])
    assert code != 0, output
    assert "events_kind_idx is invalid on the target" in output, output
    with psycopg.connect(target) as conn:
        copied = conn.execute('SELECT count(*) FROM "Visits".events').fetchone()
    assert copied == (0,), "no row may be copied into a target whose schema does not match"
