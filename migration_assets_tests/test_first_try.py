"""A newcomer's own database on the first try: every schema mode works, or refuses before it
writes. The source here is not this repository's clinic: a small music store in `public`,
which every Supabase project (and every new database) already has."""

from __future__ import annotations

import psycopg
import pytest

from migration_assets_tests.conftest import Databases, MigrationFactory
from migration_assets_tests.helpers import assert_equal_databases, run_cli

pytestmark = pytest.mark.integration

STORE = """
CREATE TYPE media AS ENUM ('mp3', 'flac', 'aac');
CREATE TABLE artist (artist_id serial PRIMARY KEY, name text NOT NULL);
CREATE TABLE album (
    album_id serial PRIMARY KEY,
    title text NOT NULL,
    artist_id int NOT NULL REFERENCES artist
);
CREATE TABLE track (
    track_id serial PRIMARY KEY,
    album_id int REFERENCES album,
    name text NOT NULL,
    kind media,
    length interval,
    unit_price numeric(10, 2) NOT NULL
);
CREATE INDEX track_album_idx ON track (album_id);
INSERT INTO artist (name) SELECT 'artist ' || i FROM generate_series(1, 40) i;
INSERT INTO album (title, artist_id) SELECT 'album ' || i, 1 + i % 40 FROM generate_series(1, 90) i;
INSERT INTO track (album_id, name, kind, length, unit_price)
SELECT 1 + i % 90, 'track ' || i, (ARRAY['mp3', 'flac', 'aac'])[1 + i % 3]::media,
       i * interval '1 second', 0.99 + i % 3
FROM generate_series(1, 700) i;
"""

# A rule added on the source after its rows, and copied with the schema: it fires during the
# load on the target (ENABLE ALWAYS holds even under session_replication_role = replica).
REFUSING_TRIGGER = """
CREATE FUNCTION no_new_tracks() RETURNS trigger LANGUAGE plpgsql AS
$$ BEGIN RAISE EXCEPTION 'the catalogue is closed'; END $$;
CREATE TRIGGER no_new_tracks BEFORE INSERT ON track FOR EACH ROW EXECUTE FUNCTION no_new_tracks();
ALTER TABLE track ENABLE ALWAYS TRIGGER no_new_tracks;
"""


def _public_tables(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
        ).fetchall()
    return [str(r[0]) for r in rows]


def test_alembic_mode_refuses_a_database_its_scripts_do_not_describe_before_writing(
    migration: MigrationFactory, databases: Databases
) -> None:
    source = databases.source(seeded=False)
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(STORE)
    m = migration(source_url=source)  # the default schema mode: this repository's Alembic
    code, output = run_cli(["plan", "--out", str(m.plan_path)])
    assert code == 0, output
    assert "warning: `migrate` will refuse" in output
    assert "has no alembic_version table" in output
    for unknown_revision in (False, True):
        if unknown_revision:  # an app of its own whose revision these scripts never made
            with psycopg.connect(source, autocommit=True) as conn:
                conn.execute("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
                conn.execute("INSERT INTO alembic_version VALUES ('f00dfeed')")
        code, output = run_cli(["migrate", "--workers", "1"])
        assert code == 2, output
        flat = " ".join(output.split())
        for named in (
            "MIGRATION_SCHEMA_MODE=pg_dump",
            "MIGRATION_SCHEMA_MODE=existing",
            "MIGRATION_ALEMBIC_CONFIG",
        ):
            assert named in flat, output
        assert ("f00dfeed" in flat) is unknown_revision, output
        assert _public_tables(m.target_url) == [], "nothing may be created on the target"


@pytest.mark.slow
def test_pg_dump_mode_brings_a_public_schema_and_finishes_after_a_failed_attempt(
    migration: MigrationFactory, databases: Databases, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = databases.source(seeded=False)
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(STORE)
        conn.execute(REFUSING_TRIGGER)
    m = migration(source_url=source)
    assert "public" in _public_schemas(m.target_url), "the target has public, as Supabase"
    monkeypatch.setenv("MIGRATION_SCHEMA_MODE", "pg_dump")
    code, output = run_cli(["plan", "--out", str(m.plan_path)])
    assert code == 0, output
    assert "warning" not in output
    code, output = run_cli(["migrate", "--workers", "1"])
    assert code == 1, output  # the schema came; the copied trigger refuses track's rows
    assert "no_new_tracks" in output, "the failure names the trigger that fired"
    assert set(_public_tables(m.target_url)) == {"album", "artist", "track"}
    with psycopg.connect(m.target_url, autocommit=True) as conn:
        conn.execute("ALTER TABLE track DISABLE TRIGGER no_new_tracks")  # as the message says
    code, output = run_cli(["migrate", "--workers", "1"])
    assert code == 0, output  # the schema of the failed attempt is there: not applied again
    assert "every partition verified" in output
    assert_equal_databases(source, m.target_url, schemas=["public"])
    code, output = run_cli(["verify"])
    assert code == 0, output


def _public_schemas(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname IN ('public', 'extensions')"
        ).fetchall()
    return [str(r[0]) for r in rows]
