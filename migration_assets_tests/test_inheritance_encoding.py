"""Inheritance parents and non-UTF8 sources: data that used to come out silently wrong.

- A parent's plain SELECT includes its inheritance children's rows, and the children are
  planned as tables of their own: every relation must hold exactly its OWN rows.
- A LATIN1 or SQL_ASCII source holds the same characters in other bytes than the UTF8
  target: they must migrate and verify, or be refused before anything is written.

The comparisons here are independent of the project's: `FROM ONLY` digests and
characters read through psycopg, never the project's checksums.
"""

from __future__ import annotations

import re

import psycopg
import pytest
from psycopg import sql

from migration_assets.db.audit import orphan_rows
from migration_assets.db.bisect import localise
from migration_assets.db.session import connect
from migration_assets.db.slices import SliceSpec, text_bytes
from migration_assets.devstack.stack import SOURCE_ROLE, DevStack
from migration_assets.plan import load_plan
from migration_assets_tests.conftest import Databases, Migration, MigrationFactory, unique
from migration_assets_tests.helpers import PINS, PLAN_ARGS, run_cli

pytestmark = pytest.mark.integration


INHERITANCE_SCHEMA = """
CREATE SCHEMA wards;
CREATE TABLE wards.ward (id int PRIMARY KEY, name text NOT NULL);
CREATE TABLE wards.visit (
    id bigint PRIMARY KEY, ward_id int REFERENCES wards.ward (id), note text
);
CREATE TABLE wards.visit_child (extra text) INHERITS (wards.visit);
ALTER TABLE wards.visit_child ADD PRIMARY KEY (id);
CREATE TABLE wards.visit_grandchild (level int) INHERITS (wards.visit_child);
ALTER TABLE wards.visit_grandchild ADD PRIMARY KEY (id);
CREATE TABLE wards.visit_note (
    id int PRIMARY KEY, visit_id bigint NOT NULL REFERENCES wards.visit (id)
);
"""

# Children do not inherit FKs: their ward_id 99 matches no ward, and that is legal.
INHERITANCE_ROWS = """
INSERT INTO wards.ward SELECT i, 'ward ' || i FROM generate_series(1, 3) i;
INSERT INTO wards.visit SELECT i, 1 + i % 3, 'own ' || i FROM generate_series(1, 400) i;
INSERT INTO wards.visit_child (id, ward_id, note, extra)
SELECT 1000 + i, 99, 'child ' || i, 'x' || i FROM generate_series(1, 300) i;
INSERT INTO wards.visit_grandchild (id, ward_id, note, extra, level)
SELECT 2000 + i, 1, 'grandchild ' || i, 'y', i FROM generate_series(1, 100) i;
INSERT INTO wards.visit_note SELECT i, i FROM generate_series(1, 50) i;
ANALYZE;
"""

OWN_ROWS = {
    "ward": 3,
    "visit": 400,
    "visit_child": 300,
    "visit_grandchild": 100,
    "visit_note": 50,
}


def _plan(m: Migration) -> None:
    code, output = run_cli(["plan", "--out", str(m.plan_path), *PLAN_ARGS])
    assert code == 0, output


def _migrate() -> tuple[int, str]:
    return run_cli(["migrate", "--workers", "1"])


def own_row_digests(url: str, schema: str) -> dict[str, tuple[int, str]]:
    """Per relation: count and md5 of its OWN rows' text (`FROM ONLY`), sorted."""
    out: dict[str, tuple[int, str]] = {}
    with psycopg.connect(url) as conn:
        conn.execute(PINS)
        names = conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind = 'r' ORDER BY 1",
            [schema],
        ).fetchall()
        for (name,) in names:
            row = conn.execute(
                sql.SQL(
                    "SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY "
                    "t::text), '')) FROM ONLY {} t"
                ).format(sql.Identifier(schema, name))
            ).fetchone()
            assert row is not None
            out[str(name)] = (int(row[0]), str(row[1]))
    return out


def _failed(output: str, asset: str, check: str) -> bool:
    """The verify table has a FAIL row for exactly this asset and check."""
    row = re.escape(asset) + r"\s+│\s*" + re.escape(check) + r"\s*│\s*FAIL"
    return re.search(row, output) is not None


def test_inheritance_every_relation_holds_its_own_rows(
    migration: MigrationFactory, databases: Databases, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, target = databases.existing_pair(INHERITANCE_SCHEMA, INHERITANCE_ROWS, monkeypatch)
    m = migration(source_url=source, target_url=target)
    _plan(m)
    plan = load_plan(m.plan_path)
    visit = plan.table("wards.visit")
    assert visit.row_estimate == 400, "the plan counts a parent's own rows"
    assert visit.slicing.partitions > 1
    assert not visit.partitioned
    code, output = _migrate()
    assert code == 0, output
    src, tgt = own_row_digests(source, "wards"), own_row_digests(target, "wards")
    assert {name: n for name, (n, _) in src.items()} == OWN_ROWS
    assert tgt == src, "each relation holds exactly its own rows"

    code, output = run_cli(["verify"])
    assert code == 0, output

    # a target parent that holds its children's rows a second time must not verify
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO wards.visit (id, ward_id, note) "
            "SELECT id, ward_id, note FROM ONLY wards.visit_grandchild"
        )
    code, output = run_cli(["verify", "--tables", "wards.visit", "wards.visit_grandchild"])
    assert code == 1, output
    assert _failed(output, "wards/visit", "table_row_count"), output
    assert _failed(output, "wards/visit", "table_checksum"), output
    assert not _failed(output, "wards/visit_grandchild", "table_row_count"), output


def test_orphan_check_sees_a_parents_own_rows_only(databases: Databases) -> None:
    """PostgreSQL's FK to a parent ignores its children; so must the orphan check."""
    with psycopg.connect(databases.target(), autocommit=True) as conn:
        conn.execute(INHERITANCE_SCHEMA)
        conn.execute(INHERITANCE_ROWS)
        # visit 7 leaves the parent; a child row with the same id does not satisfy the FK
        conn.execute("SET session_replication_role = replica")
        conn.execute("DELETE FROM ONLY wards.visit WHERE id = 7")
        conn.execute("INSERT INTO wards.visit_child (id, ward_id, note) VALUES (7, 1, 'c')")
        assert orphan_rows(
            conn,
            schema="wards",
            table="visit_note",
            key=["id"],
            columns=["visit_id"],
            ref_schema="wards",
            ref_table="visit",
            ref_columns=["id"],
        ) == (1, ["(7)"])
        # the parent's FK to ward covers its own rows: children's ward_id 99 is no orphan
        assert orphan_rows(
            conn,
            schema="wards",
            table="visit",
            key=["id"],
            columns=["ward_id"],
            ref_schema="wards",
            ref_table="ward",
            ref_columns=["id"],
        ) == (0, [])


# ------------------------------------------------------------------ encodings

TEXT_SCHEMA = """
CREATE SCHEMA clinic_text;
CREATE TABLE clinic_text.people (
    id int PRIMARY KEY, name text NOT NULL, city varchar(40), tags text[]
);
CREATE TABLE clinic_text.codes (code text PRIMARY KEY, label text);
"""

TEXT_ROWS = """
INSERT INTO clinic_text.people
SELECT i, (ARRAY['Müller', 'José', 'Ærø ½', 'Straße'])[1 + i % 4] || ' ' || i,
       CASE WHEN i % 5 = 0 THEN NULL ELSE 'Zürich' END, ARRAY['é', 'plain', NULL]
FROM generate_series(1, 600) i;
INSERT INTO clinic_text.codes
SELECT 'Ç-' || i || '-é', '½ dose ' || i FROM generate_series(1, 600) i;
ANALYZE;
"""


def _encoded_source(stack: DevStack, encoding: str) -> str:
    """An empty source database in `encoding` (C locale), owned by the clinic role."""
    assert stack.source is not None
    name = unique(f"src_{encoding.lower()}")
    stack.source.admin(
        f"CREATE DATABASE \"{name}\" ENCODING '{encoding}' LC_COLLATE 'C' LC_CTYPE 'C' "
        f"TEMPLATE template0 OWNER {SOURCE_ROLE}"
    )
    return stack.source_url_for(name)


def _text_rows(url: str) -> list[tuple[object, ...]]:
    """Every row as Python objects: psycopg decodes, so this compares characters."""
    with psycopg.connect(url, client_encoding="UTF8") as conn:
        people = conn.execute("SELECT * FROM clinic_text.people ORDER BY id").fetchall()
        codes = conn.execute("SELECT * FROM clinic_text.codes ORDER BY label").fetchall()
    return [*people, *codes]


def _migrate_text_source(
    migration: MigrationFactory,
    databases: Databases,
    monkeypatch: pytest.MonkeyPatch,
    source: str,
    rows: str = TEXT_ROWS,
) -> tuple[Migration, int, str]:
    with psycopg.connect(source, autocommit=True, client_encoding="UTF8") as conn:
        conn.execute(TEXT_SCHEMA)
        conn.execute(rows)
    target = databases.target()
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute(TEXT_SCHEMA)
    monkeypatch.setenv("MIGRATION_SCHEMA_MODE", "existing")
    m = migration(source_url=source, target_url=target)
    _plan(m)
    code, output = _migrate()
    return m, code, output


@pytest.mark.parametrize("encoding", ["LATIN1", "SQL_ASCII"])
def test_non_utf8_source_migrates_and_verifies_the_same_characters(
    encoding: str,
    stack: DevStack,
    migration: MigrationFactory,
    databases: Databases,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    m, code, output = _migrate_text_source(
        migration, databases, monkeypatch, _encoded_source(stack, encoding)
    )
    plan = load_plan(m.plan_path)
    assert plan.source_encoding == encoding
    assert plan.table("clinic_text.codes").slicing.strategy == "hash", "text keys hash"
    assert code == 0, output
    source_rows = _text_rows(m.source_url)
    assert "Müller 4" in str(source_rows)
    assert len(source_rows) == 1200
    assert _text_rows(m.target_url) == source_rows
    code, output = run_cli(["verify"])
    assert code == 0, output

    # a changed row is found, and named, across the two encodings
    with psycopg.connect(m.target_url, autocommit=True) as conn:
        conn.execute("UPDATE clinic_text.codes SET label = 'changed' WHERE code = 'Ç-17-é'")
    table = plan.table("clinic_text.codes")
    spec = next(
        table.slice(i)
        for i in range(table.slicing.partitions)
        if _holds(m.source_url, table.slice(i), "Ç-17-é")
    )
    with (
        connect(m.source_url, setting="SOURCE_DATABASE_URL") as src,
        connect(m.target_url, setting="SUPABASE_DB_URL") as tgt,
    ):
        diff = localise(
            src,
            tgt,
            spec,
            key=table.key,
            checksum_columns=table.checksum_columns,
            copy_columns=table.copy_columns,
        )
    assert (diff.total, diff.different, diff.missing, diff.extra) == (1, ["Ç-17-é"], [], [])


def _holds(url: str, spec: SliceSpec, code: str) -> bool:
    """Whether this slice of the source holds the row with this code."""
    with connect(url, setting="SOURCE_DATABASE_URL") as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE {} AND code = {}").format(
                spec.own_rows, spec.predicate(text_bytes(conn)), sql.Literal(code)
            )
        ).fetchone()
    return bool(row and row[0])


def test_sql_ascii_source_with_invalid_utf8_is_refused_before_anything_is_written(
    stack: DevStack,
    migration: MigrationFactory,
    databases: Databases,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 'Jos' + byte 0xE9: LATIN1's é, stored unchecked by SQL_ASCII, invalid as UTF-8
    dirty = TEXT_ROWS + "INSERT INTO clinic_text.codes VALUES ('bad', E'Jos\\xe9 n');"
    m, code, output = _migrate_text_source(
        migration, databases, monkeypatch, _encoded_source(stack, "SQL_ASCII"), dirty
    )
    assert code in (1, 2), output
    assert "nothing was written" in output, output
    assert "clinic_text.codes.label: holds bytes that are not valid UTF-8" in output, output
    assert "clinic_text.codes.code" not in output, output
    assert "clinic_text.people" not in output, output
    assert "0xe9" not in output.lower(), "no value (not even its bytes) in messages"
    assert "Jos" not in output, "no value in messages"
    with psycopg.connect(m.target_url) as conn:
        counts = conn.execute(
            "SELECT (SELECT count(*) FROM clinic_text.people), "
            "(SELECT count(*) FROM clinic_text.codes)"
        ).fetchone()
    assert counts == (0, 0), "nothing was written to the target"
