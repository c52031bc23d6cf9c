"""The native row hash is as exact as the row's text, on real servers.

`RowHash` hashes some columns by their type's own hash, which is cheaper than printing them.
A type whose equality is looser than identity (numeric 1.0 = 1.00, -0 = 0 for floats,
'1 day' = '24 hours', arrays that differ only in bounds) would let a changed row verify.
Each case below changes one value on the target, into another that its type may call equal
or in a natively hashed column, and the slice checksums must differ.
"""

from __future__ import annotations

import psycopg
import pytest

from migration_assets.db.checksum import Checksum, RowHash, slice_checksum
from migration_assets.db.session import Connection, connect
from migration_assets.db.slices import SliceSpec, Strategy, text_bytes
from migration_assets_tests.conftest import Databases

pytestmark = pytest.mark.integration

SCHEMA = """
CREATE TYPE mood AS ENUM ('calm', 'tense');
CREATE TABLE zoo (
    id bigint PRIMARY KEY, small smallint, whole integer, flag boolean, ident uuid, born date,
    seen timestamptz, wall timestamp(3), blob bytea, name text, code varchar(12),
    amount numeric, doc jsonb, tags text[], ratio float8,
    span interval, feeling mood
);
INSERT INTO zoo VALUES
    (1, 7, 70000, true, '6f1c2d3e-0000-4000-8000-000000000001', '2020-02-29',
     '2024-05-01 10:00:00.5+00', '2024-05-01 10:00:00.123', '\\x00ff', 'abc', 'Abc-1', 1.5,
     '{"a": 1.0}', '{a,b}', 0, '1 day', 'calm'),
    (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, '', NULL, NULL, NULL, NULL, NULL,
     NULL, NULL);
"""

CHANGES = {
    "bigint": "UPDATE zoo SET id = 3 WHERE id = 2",
    "smallint": "UPDATE zoo SET small = 8 WHERE id = 1",
    "integer": "UPDATE zoo SET whole = 70001 WHERE id = 1",
    "boolean": "UPDATE zoo SET flag = false WHERE id = 1",
    "uuid": "UPDATE zoo SET ident = '6f1c2d3e-0000-4000-8000-000000000002' WHERE id = 1",
    "date": "UPDATE zoo SET born = '2020-03-01' WHERE id = 1",
    "timestamptz by a microsecond": "UPDATE zoo SET seen = seen + '1 microsecond' WHERE id = 1",
    "timestamp by a millisecond": "UPDATE zoo SET wall = wall + '1 millisecond' WHERE id = 1",
    "bytea": "UPDATE zoo SET blob = '\\x00fe' WHERE id = 1",
    "text case": "UPDATE zoo SET name = 'ABC' WHERE id = 1",
    "empty text to NULL": "UPDATE zoo SET name = NULL WHERE id = 2",
    "varchar": "UPDATE zoo SET code = 'Abc-2' WHERE id = 1",
    "numeric scale": "UPDATE zoo SET amount = 1.50 WHERE id = 1",
    "jsonb number scale": """UPDATE zoo SET doc = '{"a": 1.00}' WHERE id = 1""",
    "array bounds": "UPDATE zoo SET tags = '[0:1]={a,b}' WHERE id = 1",
    "float sign of zero": "UPDATE zoo SET ratio = '-0' WHERE id = 1",
    "interval units": "UPDATE zoo SET span = '24 hours' WHERE id = 1",
    "enum": "UPDATE zoo SET feeling = 'tense' WHERE id = 1",
}


def _columns(conn: Connection) -> list[tuple[str, str]]:
    return [
        (str(name), str(kind))
        for name, kind in conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = 'zoo'::regclass AND attnum > 0 ORDER BY attnum"
        )
    ]


WHOLE = SliceSpec("public", "zoo", Strategy.SINGLE, ("id",), "bigint", (), 1, 0)


def _sums(src: Connection, tgt: Connection, rows: RowHash) -> tuple[Checksum, Checksum]:
    return slice_checksum(src, WHOLE, rows), slice_checksum(tgt, WHOLE, rows)


def test_every_change_a_looser_type_equality_would_hide_changes_the_checksum(
    databases: Databases,
) -> None:
    urls = databases.source(seeded=False), databases.target()
    for url in urls:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(SCHEMA)
    with (
        connect(urls[0], setting="SOURCE_DATABASE_URL") as src,
        connect(urls[1], setting="SUPABASE_DB_URL") as tgt,
    ):
        rows = RowHash.between(src, tgt, _columns(src))
        assert rows.method == "native", "both servers are PostgreSQL 14+ in UTF8"
        assert "hash_record_extended" in rows.expression(text_bytes(src)).as_string(src)
        before = _sums(src, tgt, rows)
        assert before[0] == before[1]
        assert before[0].rows == 2
        assert _sums(src, tgt, RowHash(rows.columns))[0] != before[0]  # really another hash
        hidden = []
        for what, change in CHANGES.items():
            with tgt.transaction(force_rollback=True):
                tgt.execute(change)
                if slice_checksum(tgt, WHOLE, rows) == before[0]:
                    hidden.append(what)
        assert hidden == []
        assert _sums(src, tgt, rows) == before  # every change was rolled back
