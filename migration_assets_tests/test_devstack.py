"""The throwaway stack behaves like the real thing where it matters."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from migration_assets.db.schema import alembic_upgrade
from migration_assets.devstack.binaries import DevstackError
from migration_assets.devstack.seed import seed
from migration_assets.devstack.stack import DevStack
from migration_assets_tests.conftest import ALEMBIC_INI, Databases

pytestmark = pytest.mark.integration


def _selfcheck(prefix: list[str]) -> dict[str, object]:
    proc = subprocess.run(
        [*prefix, sys.executable, "-m", "migration_assets.devstack", "selfcheck"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_stack_starts_and_stops_as_root_with_servers_unprivileged() -> None:
    if os.geteuid() != 0:
        pytest.fail("CI runs as root: this test must run there (run the suite as root)")
    result = _selfcheck([])
    assert result["euid"] == 0
    assert result["server_uid"] != 0, "PostgreSQL must run as an unprivileged account"
    assert result["target_tls"] is True
    assert result["root_removed"] is True


def test_stack_starts_and_stops_as_a_non_root_user() -> None:
    prefix: list[str] = []
    if os.geteuid() == 0:  # a user namespace makes us uid 1000 without a second install
        unshare = shutil.which("unshare")
        assert unshare, "util-linux 'unshare' is needed to test the non-root path as root"
        prefix = [unshare, "--user", "--map-user=1000", "--map-group=1000"]
    result = _selfcheck(prefix)
    assert result["euid"] != 0
    assert result["server_uid"] == result["euid"]
    assert result["root_removed"] is True


def test_target_refuses_plain_tcp_and_accepts_verify_full(stack: DevStack) -> None:
    plain = stack.target_url.replace("sslmode=verify-full", "sslmode=disable")
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        psycopg.connect(plain, connect_timeout=5)
    with psycopg.connect(stack.target_url) as conn:
        row = conn.execute(
            "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
        ).fetchone()
    assert row is not None
    assert row[0] is True
    assert row[1].startswith("TLSv1.")


def test_verify_full_rejects_a_certificate_from_another_ca(stack: DevStack, tmp_path: Path) -> None:
    from migration_assets.devstack.tls import make_ca

    other = make_ca("someone else").write_cert(tmp_path / "other.crt")
    wrong = stack.target_url.replace(str(stack.ca_file), str(other))
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        psycopg.connect(wrong, connect_timeout=5)


def test_migration_role_is_not_a_superuser_but_may_set_replication_role(stack: DevStack) -> None:
    with psycopg.connect(stack.target_url) as conn:
        row = conn.execute(
            "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        assert row == (False, True)
        conn.execute("SET session_replication_role = replica")
        roles = {r[0] for r in conn.execute("SELECT rolname FROM pg_roles")}
    assert {"anon", "authenticated", "service_role"} <= roles


def test_alembic_upgrade_downgrade_upgrade(databases: Databases) -> None:
    from alembic.config import Config
    from sqlalchemy import create_engine

    from alembic import command
    from migration_assets.db.dsn import sqlalchemy_url

    url = databases.source(seeded=False)
    alembic_upgrade(url, sslrootcert=None, config_path=ALEMBIC_INI)
    engine = create_engine(sqlalchemy_url(url))
    cfg = Config(str(ALEMBIC_INI))
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        cfg.attributes["configure_logger"] = False
        command.downgrade(cfg, "base")
    with psycopg.connect(url) as conn:
        left = conn.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname IN ('public', 'reference') AND c.relkind IN ('r', 'S') "
            "AND c.relname <> 'alembic_version'"
        ).fetchone()
        assert left == (0,)
    alembic_upgrade(url, sslrootcert=None, config_path=ALEMBIC_INI)
    with psycopg.connect(url) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname IN ('public', 'reference')"
        ).fetchone()
    engine.dispose()
    assert tables is not None
    assert tables[0] >= 9


def _table_digests(url: str) -> dict[str, tuple[int, str]]:
    """An independent digest: md5 over every row's text, sorted, per table."""
    out: dict[str, tuple[int, str]] = {}
    with psycopg.connect(url) as conn:
        names = conn.execute(
            "SELECT schemaname, tablename FROM pg_tables "
            "WHERE schemaname IN ('public', 'reference') ORDER BY 1, 2"
        ).fetchall()
        for schema, table in names:
            rel = sql.Identifier(schema, table)
            row = conn.execute(
                sql.SQL(
                    "SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' "
                    "ORDER BY t::text), '')) FROM {} t"
                ).format(rel)
            ).fetchone()
            assert row is not None
            out[f"{schema}.{table}"] = (int(row[0]), str(row[1]))
    return out


def test_seed_is_deterministic(databases: Databases) -> None:
    digests = []
    for _ in range(2):
        url = databases.source(seeded=False)
        alembic_upgrade(url, sslrootcert=None, config_path=ALEMBIC_INI)
        with psycopg.connect(url) as conn:
            counts = seed(conn, patients=120, seed=99)
            conn.commit()
        digests.append(_table_digests(url))
    assert digests[0] == digests[1]
    assert counts["public.patients"] == 120
    assert all(n > 0 for n, _ in digests[0].values() if True)


def test_pooler_needs_prepared_statements_off(stack: DevStack) -> None:
    pooler_url = stack.pooler_url
    assert pooler_url, "pgbouncer must be installed (apt-get install pgbouncer)"
    query = "SELECT %s::int + 1"

    # psycopg prepares after 5 runs; through a transaction pooler the next client that
    # lands on the same server connection tries to prepare the same name again.
    def run_with_default_settings() -> None:
        for _ in range(3):
            with psycopg.connect(pooler_url, autocommit=True) as conn:
                for i in range(8):
                    conn.execute(query, [i])

    with pytest.raises(psycopg.errors.DuplicatePreparedStatement):
        run_with_default_settings()
    for _ in range(3):
        with psycopg.connect(pooler_url, autocommit=True, prepare_threshold=None) as conn:
            for i in range(50):
                assert conn.execute(query, [i]).fetchone() == (i + 1,)


def test_a_stack_dir_the_service_account_cannot_reach_is_named(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("CI runs as root: this test must run there")
    hidden = tmp_path / "private"
    hidden.mkdir(mode=0o700)
    with pytest.raises(DevstackError, match="cannot enter"):
        DevStack(root=hidden / "stack").start()


def test_stack_output_and_server_logs_carry_no_secrets_or_rows() -> None:
    tmp_path = Path(tempfile.mkdtemp(prefix="ma-logscan-"))
    tmp_path.chmod(0o755)
    script = (
        "import psycopg\n"
        "from migration_assets.devstack.stack import DevStack\n"
        "from migration_assets.cli.demo import prepare_source\n"
        f"s = DevStack(root=__import__('pathlib').Path({str(tmp_path / 'st')!r}), keep_root=True)\n"
        "s.start()\n"
        "prepare_source(s, patients=50, seed=3)\n"
        "with psycopg.connect(s.source_url, autocommit=True) as c:\n"
        "    try:\n"
        "        c.execute('INSERT INTO patients SELECT * FROM patients LIMIT 1')\n"
        "    except Exception:\n"
        "        pass\n"
        "    rows = c.execute('SELECT mrn, email, given_name FROM patients LIMIT 20').fetchall()\n"
        "print('SECRETS', *s.passwords.values(), sep='\\n')\n"
        "print('ROWS', *[v for r in rows for v in r if v], sep='\\n')\n"
        "s.stop()\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=180, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = proc.stdout.split("SECRETS\n", 1)
    before, secrets_and_rows = printed[0], printed[1]
    secrets, rows = secrets_and_rows.split("ROWS\n", 1)
    needles = [s for s in secrets.split() if s] + [r for r in rows.splitlines() if len(r) > 3]
    assert len(needles) > 10
    logs = "".join(p.read_text(errors="replace") for p in (tmp_path / "st").rglob("*.log"))
    shutil.rmtree(tmp_path, ignore_errors=True)
    for needle in needles:
        assert needle not in before, "the stack printed a secret or a row value"
        assert needle not in proc.stderr
        assert needle not in logs, "a server log holds a secret or a row value"
