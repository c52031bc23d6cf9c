"""The source's connection: a non-local source is refused without verified TLS, before any
connection is attempted; a verified one is recorded by `tls_in_use`, as the target is."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from migration_assets.db.dsn import display_url, parse_dsn
from migration_assets.db.errors import MigrationError
from migration_assets.defs.resources import Secrets, SourceDatabase
from migration_assets.devstack.stack import DevStack
from migration_assets_tests.conftest import Databases, MigrationFactory
from migration_assets_tests.helpers import run_cli, tls_metadata
from migration_assets_tests.waiting import wait_until

REMOTE = "clinic-db.example.org"  # never resolved: hostaddr says where libpq connects
WARD = """
CREATE SCHEMA ward;
CREATE TABLE ward.beds (id int PRIMARY KEY, label text NOT NULL, occupied boolean);
"""
WARD_ROWS = "INSERT INTO ward.beds SELECT i, 'bed ' || i, i % 2 = 0 FROM generate_series(1, 60) i"


def _with(url: str, **changes: str) -> str:
    params = parse_dsn(url)
    params.update(changes)
    return display_url(params, mask=False)


class QuietListener:
    """A TCP port on loopback that accepts connections and never answers: whatever tries to
    connect to it is seen, and gives up after its connect_timeout."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.setblocking(False)
        self.port = int(self.sock.getsockname()[1])

    def url(self, **extra: str) -> str:
        """A source on another host by name, reaching this port through hostaddr."""
        params = {
            "user": "clinic",
            "password": "not-used",
            "host": REMOTE,
            "hostaddr": "127.0.0.1",
            "port": str(self.port),
            "dbname": "clinic",
            "connect_timeout": "2",
            **extra,
        }
        return display_url(params, mask=False)

    def attempts(self) -> int:
        """Connections made to the port since the last call (libpq's TCP handshake is over
        before its connect call returns, so one made is one already queued here)."""
        count = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return count
            conn.close()
            count += 1


@pytest.fixture
def listener() -> Iterator[QuietListener]:
    made = QuietListener()
    try:
        yield made
    finally:
        made.sock.close()


def _refusal_named(text: str) -> None:
    assert "SOURCE_DATABASE_URL" in text, text
    assert "sslmode=verify-full" in text, text
    assert "SOURCE_SSLROOTCERT" in text, text
    assert "MIGRATION_SOURCE_TLS=unverified" in text, text


@pytest.mark.unit
@pytest.mark.parametrize("sslmode", ["prefer", "require"])
def test_the_source_resource_refuses_a_non_local_source_before_connecting(
    sslmode: str, listener: QuietListener
) -> None:
    """The resource judges its own URL (a run may get its settings elsewhere than the CLI:
    the UI, a run launcher's container): nothing is attempted, both ways of connecting."""
    source = SourceDatabase(secrets=Secrets(source_url=listener.url(sslmode=sslmode)))
    with pytest.raises(MigrationError) as caught, source.connect():
        pass
    _refusal_named(str(caught.value))
    with pytest.raises(MigrationError) as lent, source.lend():
        pass
    _refusal_named(str(lent.value))
    assert listener.attempts() == 0, "the resource connected before judging the URL"

    relaxed = SourceDatabase(
        secrets=Secrets(source_url=listener.url(sslmode=sslmode)), tls="unverified"
    )
    with pytest.raises(MigrationError) as timed_out, relaxed.connect():
        pass
    assert "SOURCE_SSLROOTCERT" not in str(timed_out.value), "unverified was not honoured"
    assert wait_until(listener.attempts, 10, "the relaxed resource's connection attempt")


@pytest.mark.integration
@pytest.mark.parametrize("command", ["plan", "migrate"])
def test_the_cli_refuses_a_non_local_source_before_connecting(
    command: str,
    migration: MigrationFactory,
    listener: QuietListener,
    monkeypatch: pytest.MonkeyPatch,
    isolated_cwd: Path,
) -> None:
    m = migration()
    if command == "migrate":  # a reviewed plan exists; then the source moves elsewhere
        code, output = run_cli(["plan", "--out", str(m.plan_path)])
        assert code == 0, output
    monkeypatch.setenv("SOURCE_DATABASE_URL", listener.url(sslmode="require"))
    out = isolated_cwd / "refused.json"
    args = ["plan", "--out", str(out)] if command == "plan" else ["migrate", "--workers", "1"]
    code, output = run_cli(args)
    assert code == 2, output
    _refusal_named(" ".join(output.split()))
    assert "not-used" not in output
    assert listener.attempts() == 0
    assert not out.exists()
    assert not any(m.dagster_home.iterdir()), "nothing of a run was started"


@pytest.mark.integration
@pytest.mark.parametrize("how", ["loopback, CA in the URL", "non-local name, SOURCE_SSLROOTCERT"])
def test_a_source_reached_over_verified_tls_is_recorded_with_the_target(
    how: str,
    migration: MigrationFactory,
    databases: Databases,
    stack: DevStack,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The devstack's source offers TLS with a certificate of the stack's CA; the migration
    reaches it with verify-full, and tls_in_use records what the source's session
    negotiated beside the target's (whose keys stay as they were). The non-local case
    copies the schema with pg_dump, which must verify against SOURCE_SSLROOTCERT too."""
    if how.startswith("loopback"):
        plain, target = databases.existing_pair(WARD, WARD_ROWS, monkeypatch)
        source = _with(plain, sslmode="verify-full", sslrootcert=str(stack.ca_file))
    else:  # the required path: judged non-local, verified against the setting's CA
        plain, target = databases.source(seeded=False), databases.target()
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(WARD)
            conn.execute(WARD_ROWS)
        monkeypatch.setenv("MIGRATION_SCHEMA_MODE", "pg_dump")
        source = _with(
            plain, host=stack.source_tls_host, hostaddr="127.0.0.1", sslmode="verify-full"
        )
        monkeypatch.setenv("SOURCE_SSLROOTCERT", str(stack.ca_file))
    m = migration(source_url=source, target_url=target)
    code, output = run_cli(["plan", "--out", str(m.plan_path)])
    assert code == 0, output
    code, output = run_cli(["migrate", "--workers", "1"])
    assert code == 0, output
    meta = tls_metadata(m.dagster_home)
    assert meta["ssl"] is True
    assert str(meta["protocol"]).startswith("TLSv1.")
    assert meta["cipher"] != "none"
    assert int(meta["bits"]) >= 128
    assert str(meta["source_protocol"]).startswith("TLSv1."), meta
    assert meta["source_cipher"] not in ("", "none"), meta
    assert meta["source_tls_policy"] == "verify"
    assert meta["source_sslmode"] == "verify-full"
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT count(*) FROM ward.beds").fetchone() == (60,)
