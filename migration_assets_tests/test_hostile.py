"""Hostile names and values, and the application's connection through the pooler."""

from __future__ import annotations

import psycopg
import pytest

from migration_assets.db.dsn import parse_dsn
from migration_assets.devstack.stack import SOURCE_ROLE
from migration_assets.plan import load_plan
from migration_assets_tests.conftest import Databases, MigrationFactory
from migration_assets_tests.helpers import (
    assert_equal_databases,
    migrated_and_verified,
    readme_engine_queries,
    run_cli,
)

pytestmark = pytest.mark.integration

HOSTILE_DDL = """
CREATE SCHEMA "My Schema";
CREATE SCHEMA "select";
CREATE TYPE "My Schema"."Mood" AS ENUM ('ok', 'not ok', 'ünïcode "q"');
CREATE TYPE "My Schema".pair AS (a int, b text);
CREATE DOMAIN "My Schema".pos AS int CHECK (VALUE > 0);
CREATE TABLE "My Schema"."Order Items" (
    "Id" bigint PRIMARY KEY,
    "select" text, "from" varchar(20), "quote""d" char(5), "with space" text,
    i2 smallint, i4 int, n numeric, n2 numeric(20, 6), r real, d double precision, m money,
    b boolean, dt date, t time, ttz timetz, ts timestamp, tstz timestamptz, iv interval,
    u uuid, j json, jb jsonb, x xml, ip inet, net cidr, mac macaddr, bits bit(8), vb varbit,
    tsv tsvector, pt point, rng int4range, drng daterange, arr int[], tarr text[],
    mood "My Schema"."Mood", moods "My Schema"."Mood"[], p "My Schema".pair,
    ps "My Schema".pair[], pos "My Schema".pos,
    twice numeric GENERATED ALWAYS AS (n * 2) STORED
);
CREATE TABLE "select"."table" ("user" int PRIMARY KEY, "group" text, "Ünïcode" text);
CREATE TABLE "select"."Empty" (id int PRIMARY KEY);
CREATE TABLE "select".blobs (id int PRIMARY KEY, data bytea);
"""

HOSTILE_ROWS = r"""
INSERT INTO "My Schema"."Order Items"
    ("Id", "select", "from", "quote""d", "with space", i2, i4, n, n2, r, d, m, b, dt, t, ttz,
     ts, tstz, iv, u, j, jb, x, ip, net, mac, bits, vb, tsv, pt, rng, drng, arr, tarr, mood,
     moods, p, ps, pos)
SELECT i, CASE i % 4 WHEN 0 THEN NULL WHEN 1 THEN '' ELSE E'tab\there\nnew "line" \\ ' || i END,
       'ünï' || i, 'ab', ' lead and trail ', (i % 32767)::smallint, i * 7,
       (ARRAY['NaN', 'Infinity', '-Infinity', '0', '-0.000', '123456789.1234567'])
           [1 + i % 6]::numeric,
       i / 7.0,
       (ARRAY['NaN', 'Infinity', '-Infinity', '-0', '1e-38', '3.4e38'])[1 + i % 6]::real,
       (ARRAY['NaN', 'Infinity', '-Infinity', '-0', '5e-324', '1.7976931348623157e308'])
           [1 + i % 6]::float8,
       i * 1.01, i % 2 = 0,
       (ARRAY['infinity', '-infinity', '4713-01-01 BC', '5874897-12-31', '2000-02-29'])
           [1 + i % 5]::date,
       '23:59:59.999999', '00:00+14',
       (ARRAY['infinity', '-infinity', '294276-12-31 23:59:59.999999', '4713-01-01 BC'])
           [1 + i % 4]::timestamp,
       timestamptz '2024-03-31 02:30 Europe/Berlin' + i * interval '1 minute',
       make_interval(years => i % 3, days => -i, secs => i / 3.0),
       md5(i::text)::uuid, ('{"a": [1, 2.50, null], "k": "' || i || '"}')::json,
       jsonb_build_object('deep', jsonb_build_object('n', i, 'ü', 'ö')),
       ('<a href="x">' || i || '&amp;</a>')::xml,
       ('2001:db8::' || to_hex(i))::inet, ('10.' || (i % 256) || '.0.0/16')::cidr,
       '08:00:2b:01:02:03',
       (i % 256)::bit(8), B'101', to_tsvector('simple', 'quick brown fox ' || i),
       point(i, -i), int4range(i, i + 10), daterange('2020-01-01', '2020-12-31', '[]'),
       ARRAY[i, NULL, -i], ARRAY['a,b', 'c"d', NULL, '', E'\\x'],
       (ARRAY['ok', 'not ok', 'ünïcode "q"'])[1 + i % 3]::"My Schema"."Mood",
       ARRAY['ok', 'ünïcode "q"']::"My Schema"."Mood"[], ROW(i, 'x,y')::"My Schema".pair,
       ARRAY[ROW(1, NULL), ROW(NULL, '')]::"My Schema".pair[], 1 + i % 5
FROM generate_series(1, 600) i;
INSERT INTO "select"."table" SELECT i, CASE WHEN i % 3 = 0 THEN NULL ELSE 'g' || i END, 'Ωμέγα'
FROM generate_series(1, 400) i;
INSERT INTO "select".blobs VALUES (1, decode(repeat('ab', 50 * 1024 * 1024), 'hex')),
                                  (2, ''::bytea), (3, NULL);
"""


@pytest.mark.slow
def test_hostile_names_and_values_survive(
    migration: MigrationFactory, databases: Databases, monkeypatch: pytest.MonkeyPatch
) -> None:
    source, target = databases.source(seeded=False), databases.target()
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(HOSTILE_DDL)
        conn.execute(HOSTILE_ROWS)
        conn.execute("ANALYZE")
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute(HOSTILE_DDL)
    m = migration(source_url=source, target_url=target)
    monkeypatch.setenv("MIGRATION_SCHEMA_MODE", "existing")
    code, output = run_cli(
        [
            "plan",
            "--out",
            str(m.plan_path),
            "--split-above",
            "100",
            "--rows-per-partition",
            "150",
            "--min-partitions",
            "3",
        ]
    )
    assert code == 0, output
    plan = load_plan(m.plan_path)
    items = plan.table("My Schema.Order Items")
    assert items.slicing.partitions > 1
    assert not items.binary_safe, "composite and enum-array columns must go as text"
    assert plan.table("select.blobs").binary_safe
    code, output = run_cli(["migrate", "--workers", "1"])
    assert code == 0, output
    assert_equal_databases(source, target, schemas=["My Schema", "select"])
    with psycopg.connect(target) as conn:
        size = conn.execute('SELECT octet_length(data) FROM "select".blobs WHERE id = 1')
        assert size.fetchone() == (50 * 1024 * 1024,)
    code, output = run_cli(["verify"])
    assert code == 0, output


def test_the_readme_app_engine_works_through_the_pooler(
    databases: Databases, stack: object
) -> None:
    """Runs the README's SQLAlchemy snippet, as documented, against the test pooler."""
    from migration_assets.db.dsn import display_url, parse_dsn
    from migration_assets.devstack.stack import DevStack

    assert isinstance(stack, DevStack)
    assert stack.pooler_url, "pgbouncer must be installed (apt-get install pgbouncer)"
    params = parse_dsn(stack.pooler_url)
    for key in ("sslmode", "sslrootcert"):
        params.pop(key)
    url = display_url(params, mask=False).replace("postgresql://", "postgresql+psycopg://")
    assert readme_engine_queries(url, str(stack.ca_file)) == [i + 1 for i in range(30)]


# Extensions in `public`, tables elsewhere: `pg_dump -n clinic` dumps neither the extensions
# nor `public`, yet the tables' types and the trigram index name them there.
EXTENSIONS_DDL = """
CREATE EXTENSION citext; CREATE EXTENSION hstore; CREATE EXTENSION ltree;
CREATE EXTENSION cube; CREATE EXTENSION pg_trgm; CREATE EXTENSION btree_gist;
CREATE SCHEMA clinic;
CREATE TABLE clinic.staff (email citext PRIMARY KEY, attrs hstore, path ltree, pos cube,
    name text);
CREATE INDEX staff_name_trgm ON clinic.staff USING gin (name gin_trgm_ops);
CREATE TABLE clinic.rooms (room int, during tstzrange,
    EXCLUDE USING gist (room WITH =, during WITH &&));
"""

EXTENSIONS_ROWS = """
INSERT INTO clinic.staff
SELECT 'User' || i || '@Example.org', hstore('k', i::text) || hstore('ü', NULL),
       ('top.dept' || (i % 7) || '.n' || i)::ltree, cube(array[i, -i, i / 3.0]), 'name ' || i
FROM generate_series(1, 700) i;
INSERT INTO clinic.rooms
SELECT i % 13, tstzrange(timestamptz '2024-01-01' + i * interval '1 hour',
                         timestamptz '2024-01-01' + (i + 1) * interval '1 hour')
FROM generate_series(1, 500) i;
ANALYZE;
"""


def test_extension_types_come_through_a_pg_dump_schema(
    migration: MigrationFactory, databases: Databases, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = databases.source(seeded=False)
    with psycopg.connect(source, autocommit=True) as conn:  # trusted extensions: its owner may
        conn.execute(EXTENSIONS_DDL)
        conn.execute(EXTENSIONS_ROWS)
    # one the target's role may not create, and nothing planned uses: no reason to stop
    assert databases.stack.source is not None
    databases.stack.source.admin("CREATE EXTENSION file_fdw", dbname=parse_dsn(source)["dbname"])
    m = migration(source_url=source)
    monkeypatch.setenv("MIGRATION_SCHEMA_MODE", "pg_dump")
    split = ["--split-above", "100", "--rows-per-partition", "150", "--schema", "clinic"]
    migrated_and_verified(m.plan_path, *split)
    assert load_plan(m.plan_path).table("clinic.staff").slicing.partitions > 1
    assert_equal_databases(source, m.target_url, schemas=["clinic"])
    with psycopg.connect(m.target_url) as conn:
        where = conn.execute(
            "SELECT e.extname, n.nspname FROM pg_extension e "
            "JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'citext'"
        ).fetchall()
    assert where == [("citext", "public")], "where the dump's names look for it"


# The source role is `clinic`: with PostgreSQL's default search_path ("$user", public) the
# source prints `clinic.things` as `things`, which the target (another role) cannot resolve.
REG_DDL = f"""
CREATE SCHEMA {SOURCE_ROLE};
CREATE TYPE {SOURCE_ROLE}.mood AS ENUM ('ok', 'not ok');
CREATE TABLE {SOURCE_ROLE}.things (id int PRIMARY KEY);
CREATE SCHEMA records;
CREATE TABLE records.refs (id int PRIMARY KEY, rel regclass, typ regtype, typs regtype[],
    ns regnamespace, cfg regconfig, fn regprocedure);
"""

REG_ROWS = f"""
INSERT INTO records.refs
SELECT i, '{SOURCE_ROLE}.things', '{SOURCE_ROLE}.mood',
       ARRAY['{SOURCE_ROLE}.mood', 'int4']::regtype[], '{SOURCE_ROLE}', 'english',
       'pg_catalog.lower(text)'
FROM generate_series(1, 30) i;
"""


def test_columns_that_name_schema_objects_arrive_naming_the_same_objects(
    migration: MigrationFactory, databases: Databases, monkeypatch: pytest.MonkeyPatch
) -> None:
    """regclass and its kin are OIDs on disk: the same table has another OID on the target,
    so such columns travel as names, printed and read under one search_path on both sides."""
    source, target = databases.existing_pair(REG_DDL, REG_ROWS, monkeypatch)
    with psycopg.connect(target, autocommit=True) as conn:  # no chance of equal OIDs
        conn.execute(f"DROP TABLE {SOURCE_ROLE}.things; CREATE TABLE {SOURCE_ROLE}.things (id int)")
    m = migration(source_url=source, target_url=target)
    migrated_and_verified(m.plan_path, "--schema", "records")
    assert not load_plan(m.plan_path).table("records.refs").binary_safe

    def named(url: str) -> list[tuple[object, ...]]:
        with psycopg.connect(url) as conn:
            conn.execute("SET search_path TO ''")  # every name qualified
            return conn.execute(
                "SELECT id, rel::text, typ::text, typs::text, ns::text, cfg::text, fn::text, "
                "rel::oid = to_regclass(rel::text)::oid FROM records.refs ORDER BY id"
            ).fetchall()

    rows = named(target)
    assert rows == named(source)
    assert rows[0][1:3] == (f"{SOURCE_ROLE}.things", f"{SOURCE_ROLE}.mood")


def test_an_extension_type_in_supabase_s_extensions_schema_is_the_source_s_public_one(
    migration: MigrationFactory, databases: Databases, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Supabase installs extensions into `extensions` and puts it on the role's search_path;
    a clinic's server has them in `public`. `citext` is the same type on both sides, and a
    regtype naming it must resolve on the target."""
    source, target = databases.source(seeded=False), databases.target()
    ddl = "CREATE SCHEMA ward; CREATE TABLE ward.staff (email citext PRIMARY KEY, kind regtype);"
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION citext")
        conn.execute(ddl)
        conn.execute(
            "INSERT INTO ward.staff SELECT 'Nurse' || i || '@Example.org', 'citext' "
            "FROM generate_series(1, 60) i"
        )
    assert databases.stack.target is not None
    databases.stack.target.admin(
        "CREATE EXTENSION citext SCHEMA extensions", dbname=str(parse_dsn(target)["dbname"])
    )
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute(ddl)  # as a schema made on Supabase: citext found on the search_path
        found = conn.execute("SELECT 'ward.staff'::regclass IS NOT NULL").fetchone()
    assert found == (True,)
    monkeypatch.setenv("MIGRATION_SCHEMA_MODE", "existing")
    m = migration(source_url=source, target_url=target)
    migrated_and_verified(m.plan_path, "--schema", "ward")
    with psycopg.connect(target) as conn:
        kinds = conn.execute(
            "SELECT DISTINCT n.nspname FROM ward.staff s JOIN pg_type t ON t.oid = s.kind "
            "JOIN pg_namespace n ON n.oid = t.typnamespace"
        ).fetchall()
    assert kinds == [("extensions",)], "the name found the target's own citext"
    assert_equal_databases(source, target, schemas=["ward"])


SEQUENCE_DDL = """
CREATE SCHEMA ledger;
CREATE SEQUENCE ledger.down_seq INCREMENT BY -1 MINVALUE -1000000 MAXVALUE -1 START -1;
CREATE TABLE ledger.refunds (id int PRIMARY KEY DEFAULT nextval('ledger.down_seq'), amount int);
ALTER SEQUENCE ledger.down_seq OWNED BY ledger.refunds.id;
CREATE TABLE ledger.notes (id serial PRIMARY KEY, body text);
"""

# Each table also holds a key its sequence has not handed out yet (an explicit id).
SEQUENCE_ROWS = """
INSERT INTO ledger.refunds (amount) SELECT i FROM generate_series(1, 50) i;
INSERT INTO ledger.refunds VALUES (-80, 0);
INSERT INTO ledger.notes (body) SELECT 'note' FROM generate_series(1, 20) i;
INSERT INTO ledger.notes VALUES (30, 'explicit');
"""


def test_every_sequence_hands_out_a_new_key_whichever_way_it_counts(
    migration: MigrationFactory, databases: Databases, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A descending sequence's keys grow downwards: it must end up below its column's min.
    Set past the max instead, its next value was a key the table already held."""
    source, target = databases.existing_pair(SEQUENCE_DDL, SEQUENCE_ROWS, monkeypatch)
    m = migration(source_url=source, target_url=target)
    migrated_and_verified(m.plan_path, "--schema", "ledger")
    with psycopg.connect(target) as conn:
        down = conn.execute("SELECT nextval('ledger.down_seq')").fetchone()
        up = conn.execute("SELECT nextval('ledger.notes_id_seq')").fetchone()
    assert down == (-81,), "below -80, the column's min"
    assert up == (31,), "above 30, the column's max"
