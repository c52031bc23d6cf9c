"""Row-level security on the source: rows the source role cannot see must not vanish.

A table whose policies apply to the role we read with (FORCE ROW LEVEL SECURITY on its own
table, or any policy-bearing table it does not own) shows that role only some rows, or none.
The copy and the checksum would then read the same partial rows, and the partial copy would
verify. pg_dump refuses such a table (`row_security = off`); so must we, before anything is
written, naming the table and the fix.
"""

from __future__ import annotations

import psycopg
import pytest

from migration_assets.db.errors import safe_message
from migration_assets.db.session import open_pinned
from migration_assets_tests.conftest import Databases, MigrationFactory
from migration_assets_tests.helpers import run_cli

pytestmark = pytest.mark.integration

SCHEMA = """
CREATE SCHEMA ward;
CREATE TABLE ward.notes (id int PRIMARY KEY, visible boolean NOT NULL, note text);
CREATE TABLE ward.open_notes (id int PRIMARY KEY, note text);
"""

ROWS = """
INSERT INTO ward.notes SELECT i, i % 10 < 7, 'note ' || i FROM generate_series(1, 100) i;
INSERT INTO ward.open_notes SELECT i, 'open ' || i FROM generate_series(1, 20) i;
"""

# After the rows: the policy would refuse the hidden ones to their own owner's INSERT.
POLICY = """
ALTER TABLE ward.notes ENABLE ROW LEVEL SECURITY;
ALTER TABLE ward.notes FORCE ROW LEVEL SECURITY;
CREATE POLICY only_visible ON ward.notes USING (visible);
"""


def _count(url: str, table: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def _refused_by_name(output: str) -> None:
    assert "ward.notes: row-level security applies to the source role" in output, output
    assert "BYPASSRLS" in output, output
    assert "NO FORCE ROW LEVEL SECURITY" in output, output
    assert "open_notes:" not in output, "only the table whose policies bind is named"


def test_a_table_whose_policies_hide_rows_from_the_source_role_is_refused(
    migration: MigrationFactory, databases: Databases, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, target = databases.existing_pair(SCHEMA, ROWS, monkeypatch)
    m = migration(source_url=source, target_url=target)
    code, output = run_cli(["plan", "--out", str(m.plan_path), "--schema", "ward"])
    assert code == 0, output  # planned before the policy existed

    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(POLICY)
        visible = conn.execute("SELECT count(*) FROM ward.notes").fetchone()
    assert visible == (70,), "the owner itself sees only the policy's rows"

    # 1. a migration planned earlier is refused before anything is written
    code, output = run_cli(["migrate", "--workers", "1"])
    assert code != 0, output
    _refused_by_name(output)
    assert _count(target, "ward.notes") == 0
    assert _count(target, "ward.open_notes") == 0

    # 2. a new plan is refused too, naming the table rather than PostgreSQL's first refusal
    code, output = run_cli(["plan", "--out", str(m.plan_path), "--schema", "ward"])
    assert code != 0, output
    _refused_by_name(output)

    # 3. and should a policy appear after the preflight, every session of ours has
    #    row_security off: PostgreSQL refuses the read instead of filtering it
    with (
        open_pinned(source, setting="SOURCE_DATABASE_URL") as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege) as refused,
    ):
        conn.execute("SELECT count(*) FROM ward.notes")
    assert "BYPASSRLS" in safe_message(refused.value)

    # with the fix the message names, every row goes across and verifies
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("ALTER TABLE ward.notes NO FORCE ROW LEVEL SECURITY")
    code, output = run_cli(["plan", "--out", str(m.plan_path), "--schema", "ward"])
    assert code == 0, output
    code, output = run_cli(["migrate", "--workers", "1"])
    assert code == 0, output
    assert _count(target, "ward.notes") == 100
    assert _count(target, "ward.open_notes") == 20
