"""Bad input: one clear message naming the fix, a non-zero exit, nothing written."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from migration_assets.db.dsn import display_url, parse_dsn
from migration_assets.devstack.cluster import PostgresServer, free_port
from migration_assets.devstack.stack import DevStack
from migration_assets.devstack.tls import make_ca, write_server_cert
from migration_assets_tests.conftest import Databases, Migration, MigrationFactory, unique
from migration_assets_tests.helpers import PLAN_ARGS, run_cli

pytestmark = pytest.mark.integration


def _user_tables(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN "
            "('pg_catalog', 'information_schema', 'auth', 'storage')"
        ).fetchone()
    return int(row[0]) if row else -1


def _with(url: str, **changes: str) -> str:
    params = parse_dsn(url)
    params.update(changes)
    return display_url(params, mask=False)


def _planned(migration: MigrationFactory) -> Migration:
    m = migration()
    code, output = run_cli(["plan", "--out", str(m.plan_path), *PLAN_ARGS])
    assert code == 0, output
    return m


def _refused(monkeypatch: pytest.MonkeyPatch, url: str, *expected: str) -> str:
    monkeypatch.setenv("SUPABASE_DB_URL", url)
    started = time.monotonic()
    code, output = run_cli(["migrate"])
    assert time.monotonic() - started < 15, "a bad connection must fail fast"
    assert code == 2, output
    for text in expected:
        assert text in output, output
    return output


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"password": "wrong-password"}, ("password (or user) was rejected", "SUPABASE_DB_URL")),
        ({"host": "no-such-host.invalid"}, ("does not resolve",)),
        ({"port": "1"}, ("nothing is listening",)),
    ],
    ids=["wrong password", "unknown host", "refused port"],
)
def test_bad_connections_are_named(
    migration: MigrationFactory,
    monkeypatch: pytest.MonkeyPatch,
    change: dict[str, str],
    expected: tuple[str, ...],
) -> None:
    m = _planned(migration)
    output = _refused(monkeypatch, _with(m.target_url, **change), *expected)
    assert "wrong-password" not in output
    assert _user_tables(m.target_url) == 0


def test_target_without_tls_is_refused(
    migration: MigrationFactory, stack: DevStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dagster's storage server is the stack's one without TLS (the source offers it)."""
    m = _planned(migration)
    plain = _with(stack.dagster_url, sslmode="verify-full", sslrootcert=str(m.ca_file))
    _refused(monkeypatch, plain, "does not offer TLS")


def test_weak_tls_to_a_remote_host_is_refused_before_connecting(
    migration: MigrationFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    m = _planned(migration)
    remote = _with(m.target_url, host="db.abcdefgh.supabase.co", sslmode="require")
    output = _refused(monkeypatch, remote, "sslmode=verify-full")
    assert "SUPABASE_SSLROOTCERT" in output


def test_a_wrong_ca_file_is_named(
    migration: MigrationFactory, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    m = _planned(migration)
    other = make_ca("not the project's CA").write_cert(tmp_path / "other.crt")
    _refused(monkeypatch, _with(m.target_url, sslrootcert=str(other)), "not signed by the CA")
    assert _user_tables(m.target_url) == 0


@pytest.fixture
def odd_certificate_server(stack: DevStack, request: pytest.FixtureRequest) -> Iterator[int]:
    """A TLS server signed by the stack's CA whose certificate is expired or names another
    host, so only that can be wrong; yields its port."""
    assert stack.source is not None
    assert stack.certificate_authority is not None
    tls_dir = stack.home / unique("oddtls")
    tls_dir.mkdir()
    crt, key = tls_dir / "server.crt", tls_dir / "server.key"
    if request.param == "expired":
        write_server_cert(stack.certificate_authority, crt, key, expired=True)
    else:
        write_server_cert(stack.certificate_authority, crt, key, hosts=("db.elsewhere.example",))
    server = PostgresServer(
        unique("odd"),
        stack.home,
        stack.source.bin_dir,
        stack.user,
        tls_files=(crt, key),
        port=free_port(),
    )
    server.init()
    server.start()
    try:
        yield server.port
    finally:
        server.remove()


@pytest.mark.parametrize(
    ("odd_certificate_server", "expected"),
    [("expired", "has expired"), ("wrong host", "not valid for this host name")],
    indirect=["odd_certificate_server"],
    ids=["expired certificate", "certificate for another host"],
)
def test_bad_server_certificates_are_named(
    migration: MigrationFactory,
    monkeypatch: pytest.MonkeyPatch,
    odd_certificate_server: int,
    expected: str,
) -> None:
    m = _planned(migration)
    _refused(monkeypatch, _with(m.target_url, port=str(odd_certificate_server)), expected)


SCHEMA = "CREATE TABLE public.items (id bigint PRIMARY KEY, name text, price numeric(10,2))"


@pytest.mark.parametrize(
    ("target_ddl", "named"),
    [
        (
            "CREATE TABLE public.items (id bigint PRIMARY KEY, name text)",
            "column price missing on the target",
        ),
        (
            "CREATE TABLE public.items (id bigint PRIMARY KEY, name text, price text)",
            "column price is numeric(10,2) on the source, text on the target",
        ),
        (
            "CREATE TABLE public.items (id bigint PRIMARY KEY, name text, price numeric(10,2), "
            "sku text NOT NULL)",
            "a NOT NULL column sku exists only on the target",
        ),
    ],
    ids=["missing column", "different type", "extra NOT NULL column"],
)
def test_schema_drift_blocks_the_copy_and_names_it(
    migration: MigrationFactory,
    databases: Databases,
    monkeypatch: pytest.MonkeyPatch,
    target_ddl: str,
    named: str,
) -> None:
    source, target = databases.source(seeded=False), databases.target()
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(SCHEMA)
        conn.execute("INSERT INTO items SELECT i, 'item', i FROM generate_series(1, 50) i")
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute(target_ddl)
    m = migration(source_url=source, target_url=target)
    monkeypatch.setenv("MIGRATION_SCHEMA_MODE", "existing")
    assert run_cli(["plan", "--out", str(m.plan_path)])[0] == 0
    code, output = run_cli(["migrate"])
    assert code == 1, output
    assert "no data was copied" in output
    assert named in output
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (0,)


def test_plan_drift_is_named(migration: MigrationFactory) -> None:
    m = _planned(migration)
    with psycopg.connect(m.source_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.added_later (id int PRIMARY KEY)")
    code, output = run_cli(["migrate"])
    assert code == 1, output
    assert "public.added_later: on the source but not in the plan" in output
    with psycopg.connect(m.source_url, autocommit=True) as conn:
        conn.execute("DROP TABLE public.added_later; DROP TABLE reference.code_aliases")
    code, output = run_cli(["migrate"])
    assert code == 2, output
    assert "reference.code_aliases: in the plan but not on the source" in output


def test_a_role_that_may_not_set_replication_role_is_refused_before_writing(
    migration: MigrationFactory, stack: DevStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert stack.target is not None
    name, role = unique("tgt"), unique("weak")
    stack.target.admin(f"CREATE ROLE {role} LOGIN PASSWORD 'weak-pass'")
    stack.target.admin(f'CREATE DATABASE "{name}" OWNER {role}')
    url = _with(stack.target_url_for(name), user=role, password="weak-pass")
    _planned(migration)
    output = _refused(
        monkeypatch, url, "GRANT SET ON PARAMETER session_replication_role", "nothing was written"
    )
    assert "weak-pass" not in output
    assert _user_tables(url) == 0


def test_a_table_the_role_may_not_write_is_named(
    migration: MigrationFactory,
    databases: Databases,
    stack: DevStack,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert stack.target is not None
    source, target = databases.source(seeded=False), databases.target()
    with psycopg.connect(source, autocommit=True) as conn:
        conn.execute(SCHEMA)
    stack.target.admin(SCHEMA, dbname=parse_dsn(target)["dbname"])  # owned by the superuser
    m = migration(source_url=source, target_url=target)
    monkeypatch.setenv("MIGRATION_SCHEMA_MODE", "existing")
    assert run_cli(["plan", "--out", str(m.plan_path)])[0] == 0
    code, output = run_cli(["migrate"])
    assert code == 2, output
    assert "public.items: role postgres lacks SELECT, INSERT or DELETE" in output
    assert "GRANT SELECT, INSERT, DELETE ON public.items TO postgres" in output


TRIGGER_DDL = """
CREATE SCHEMA ward;
CREATE TABLE ward.notes (id int PRIMARY KEY, body text, touched timestamptz);
CREATE TABLE ward.events (id int, at date NOT NULL, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE ward.events_2024 PARTITION OF ward.events
    FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE FUNCTION ward.touch() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN NEW.touched := now(); RETURN NEW; END $$;
CREATE TRIGGER touch BEFORE INSERT ON ward.notes FOR EACH ROW EXECUTE FUNCTION ward.touch();
CREATE FUNCTION ward.shift() RETURNS trigger LANGUAGE plpgsql AS
    $$ BEGIN NEW.at := NEW.at + 1; RETURN NEW; END $$;
CREATE TRIGGER "Shift" BEFORE INSERT ON ward.events_2024 FOR EACH ROW EXECUTE FUNCTION ward.shift();
"""

TRIGGER_ROWS = """
INSERT INTO ward.notes (id, body) SELECT i, 'note ' || i FROM generate_series(1, 40) i;
INSERT INTO ward.events SELECT i, date '2024-03-01' + i FROM generate_series(1, 30) i;
"""


def test_a_target_trigger_that_fires_during_the_load_is_named_as_the_cause(
    migration: MigrationFactory, databases: Databases, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The load holds ordinary triggers back (session_replication_role = replica); an ALWAYS
    trigger still fires and a REPLICA one fires only then. One that rewrites rows fails its
    slice on every retry: the failure names it, and the ALTER TABLE that holds it back,
    where it used to blame concurrent writes."""
    source, target = databases.existing_pair(TRIGGER_DDL, TRIGGER_ROWS, monkeypatch)
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute("ALTER TABLE ward.notes ENABLE ALWAYS TRIGGER touch")
        conn.execute('ALTER TABLE ward.events_2024 ENABLE REPLICA TRIGGER "Shift"')
    m = migration(source_url=source, target_url=target)
    code, output = run_cli(["plan", "--out", str(m.plan_path), "--schema", "ward"])
    assert code == 0, output
    code, output = run_cli(["migrate", "--workers", "1"])
    assert code == 1, output
    flat = " ".join(output.split())
    assert "Likely cause: trigger touch on ward.notes is ENABLE ALWAYS" in flat, output
    assert 'ALTER TABLE "ward"."notes" ENABLE TRIGGER "touch";' in flat, output
    assert "trigger Shift on ward.events_2024 is ENABLE REPLICA" in flat, output
    assert 'ALTER TABLE "ward"."events_2024" DISABLE TRIGGER "Shift";' in flat, output
    assert "If the source is being written to" not in flat, "the cause is known"
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT count(*) FROM ward.notes").fetchone() == (0,)

    with psycopg.connect(target, autocommit=True) as conn:  # as the message says
        conn.execute('ALTER TABLE "ward"."notes" ENABLE TRIGGER "touch"')
        conn.execute('ALTER TABLE "ward"."events_2024" DISABLE TRIGGER "Shift"')
    code, output = run_cli(["migrate", "--workers", "1"])
    assert code == 0, output
    code, output = run_cli(["verify"])
    assert code == 0, output
