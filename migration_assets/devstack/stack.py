"""The throwaway stack: a source, a Supabase-like target, a pooler, Dagster's storage.

Used by the demo and the tests. Dagster's storage gets its own small server, not the
source's: the run and check history is the audit trail and must outlive the clinic's
database, it must stay up while tests stop or break the source and target, and
benchmarks must not measure Dagster's bookkeeping as load on the source.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import shutil
import signal
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from migration_assets.db.dsn import display_url, parse_dsn
from migration_assets.devstack.binaries import (
    DevstackError,
    ServiceUser,
    ensure_reachable,
    pg_bin_dir,
    reachable_bin_dir,
    service_user,
)
from migration_assets.devstack.cluster import LOOPBACK, PostgresServer
from migration_assets.devstack.pooler import PgBouncer, pgbouncer_binary
from migration_assets.devstack.shape import (
    DAGSTER_DB,
    DEFAULT_TARGET_CONNECTIONS,
    TARGET_CONF,
    TARGET_DATABASE,
    TARGET_ROLES,
    dagster_yaml,
)
from migration_assets.devstack.tls import (
    LOCAL_NAMES,
    CertificateAuthority,
    make_ca,
    write_server_cert,
)
from migration_assets.private import private_dir, write_private

SOURCE_DB = "clinic"
SOURCE_ROLE = "clinic"
# A name the source's certificate carries besides localhost: with hostaddr=127.0.0.1 a test
# reaches the loopback source as a non-local host, verified (`.test` never resolves).
SOURCE_TLS_HOST = "clinic-db.devstack.test"
TARGET_DB = "postgres"
TARGET_ROLE = "postgres"  # Supabase's migration role: NOT a superuser
TARGET_SUPERUSER = "supabase_admin"
API_ROLES = ("anon", "authenticated", "service_role")


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _url(**params: str | int) -> str:
    return display_url({k: str(v) for k, v in params.items()}, mask=False)


@dataclass
class DevStack:
    """Start with `with DevStack() as stack:`; everything it started stops on exit."""

    root: Path | None = None
    pooler: bool | None = None  # None: when the pgbouncer binary exists
    source_bin: Path | None = None
    target_bin: Path | None = None
    keep_root: bool = False
    user: ServiceUser = field(default_factory=service_user)
    source: PostgresServer | None = None
    target: PostgresServer | None = None
    dagster: PostgresServer | None = None
    bouncer: PgBouncer | None = None
    passwords: dict[str, str] = field(default_factory=dict)
    pooler_pid: int | None = None  # of a pooler started by an earlier process
    certificate_authority: CertificateAuthority | None = None  # in memory only
    source_tls_host: str = SOURCE_TLS_HOST
    target_connections: int = DEFAULT_TARGET_CONNECTIONS  # the Dagster pool's limit
    _created_root: bool = False

    def __enter__(self) -> DevStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def home(self) -> Path:
        assert self.root is not None, "the stack is not started"
        return self.root

    @property
    def ca_file(self) -> Path:
        return self.home / "tls" / "ca.crt"

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster_home"

    def start(self) -> DevStack:
        if self.root is None:
            self.root = Path(tempfile.mkdtemp(prefix="migration-assets-stack-"))
            self._created_root = True
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        ensure_reachable(self.root, self.user)
        atexit.register(self.stop)
        try:
            self._start_servers()
        except BaseException:
            self.stop()
            raise
        return self

    def _bin(self, explicit: Path | None) -> Path:
        return reachable_bin_dir(pg_bin_dir(explicit), self.user)

    def _start_servers(self) -> None:
        tls_dir = self.home / "tls"
        tls_dir.mkdir(exist_ok=True)
        tls_dir.chmod(0o755)
        ca = self.certificate_authority = make_ca()
        ca.write_cert(self.ca_file)
        write_server_cert(ca, tls_dir / "server.crt", tls_dir / "server.key")
        source_tls = (tls_dir / "source.crt", tls_dir / "source.key")
        write_server_cert(ca, *source_tls, hosts=(*LOCAL_NAMES, self.source_tls_host))
        self.passwords = {n: secrets.token_urlsafe(18) for n in ("source", "target", "dagster")}
        source_bin = self._bin(self.source_bin)
        target_bin = self._bin(self.target_bin or self.source_bin)
        # The source offers TLS (the stack's CA) but does not insist, as a clinic's database
        # may; its URLs say sslmode=disable, and tests that need TLS ask for verify-full.
        self.source = PostgresServer(
            "source", self.home, source_bin, self.user, tls_files=source_tls, tls_only=False
        )
        self.target = PostgresServer(
            "target",
            self.home,
            target_bin,
            self.user,
            superuser=TARGET_SUPERUSER,
            tls_files=(tls_dir / "server.crt", tls_dir / "server.key"),
            extra_conf=TARGET_CONF,
        )
        self.dagster = PostgresServer("dagster", self.home, source_bin, self.user)
        if self.target.version < 15:
            raise DevstackError(
                "the target server must be PostgreSQL 15 or newer (GRANT SET ON PARAMETER "
                "lets a non-superuser set session_replication_role, as on Supabase)"
            )
        for server in (self.source, self.target, self.dagster):
            server.init()
            server.start()
        self._bootstrap()
        if self.pooler or (self.pooler is None and pgbouncer_binary() is not None):
            self.bouncer = PgBouncer(
                home=self.home / "pooler",
                user=self.user,
                server_port=self.target.port,
                ca_file=self.ca_file,
                tls_files=(tls_dir / "server.crt", tls_dir / "server.key"),
                credentials={TARGET_ROLE: self.passwords["target"]},
            )
            self.bouncer.start()
        self._write_dagster_home()
        self._save_state()

    def _bootstrap(self) -> None:
        assert self.source
        assert self.target
        assert self.dagster
        self.source.admin(
            f"CREATE ROLE {SOURCE_ROLE} LOGIN PASSWORD {_literal(self.passwords['source'])}"
        )
        self.create_source_database(SOURCE_DB)
        self.target.admin(
            TARGET_ROLES.format(role=TARGET_ROLE, password=_literal(self.passwords["target"]))
        )
        self._bootstrap_target_database(TARGET_DB)
        self.dagster.admin(
            f"CREATE ROLE dagster LOGIN PASSWORD {_literal(self.passwords['dagster'])}"
        )
        self.dagster.admin(f"CREATE DATABASE {DAGSTER_DB} OWNER dagster")

    def create_source_database(self, name: str) -> str:
        """A new empty database owned by the clinic role; returns its URL."""
        assert self.source is not None
        self.source.admin(f'CREATE DATABASE "{name}" OWNER {SOURCE_ROLE}')
        self.source.admin(f"ALTER SCHEMA public OWNER TO {SOURCE_ROLE}", dbname=name)
        return self.source_url_for(name)

    def create_target_database(self, name: str) -> str:
        """A new database set up like a fresh Supabase project; returns its URL."""
        assert self.target is not None
        self.target.admin(f'CREATE DATABASE "{name}"')
        self._bootstrap_target_database(name)
        return self.target_url_for(name)

    def _bootstrap_target_database(self, name: str) -> None:
        assert self.target is not None
        self.target.admin(f'ALTER DATABASE "{name}" OWNER TO {TARGET_ROLE}')
        self.target.admin(
            TARGET_DATABASE.format(role=TARGET_ROLE, superuser=TARGET_SUPERUSER), dbname=name
        )

    def _write_dagster_home(self) -> None:
        assert self.dagster is not None
        private_dir(self.dagster_home)
        write_private(
            self.dagster_home / "dagster.yaml",
            dagster_yaml(port=self.dagster.port, target_connections=self.target_connections),
        )

    def dagster_home_for(self, home: Path, database: str) -> Path:
        """A DAGSTER_HOME of its own on the stack's storage server (a fresh `database`), for a
        benchmark that must not pay for SQLite's per-event commits."""
        assert self.dagster is not None
        self.dagster.admin(f'CREATE DATABASE "{database}" OWNER dagster')
        text = dagster_yaml(
            port=self.dagster.port, db=database, target_connections=self.target_connections
        )
        write_private(private_dir(home) / "dagster.yaml", text)
        return home

    def source_url_for(self, dbname: str) -> str:
        """Plain on loopback, as a clinic's local database is reached (see `_start_servers`)."""
        assert self.source is not None
        return _url(
            user=SOURCE_ROLE,
            password=self.passwords["source"],
            host=LOOPBACK,
            port=self.source.port,
            dbname=dbname,
            sslmode="disable",
        )

    def _as_migration_role(self, port: int, dbname: str) -> str:
        """The target's `postgres` role over TLS verify-full, at a server or the pooler."""
        return _url(
            user=TARGET_ROLE,
            password=self.passwords["target"],
            host=LOOPBACK,
            port=port,
            dbname=dbname,
            sslmode="verify-full",
            sslrootcert=str(self.ca_file),
        )

    def target_url_for(self, dbname: str) -> str:
        assert self.target is not None
        return self._as_migration_role(self.target.port, dbname)

    @property
    def source_url(self) -> str:
        return self.source_url_for(SOURCE_DB)

    @property
    def target_url(self) -> str:
        return self.target_url_for(TARGET_DB)

    @property
    def pooler_url(self) -> str | None:
        if self.bouncer is None:
            return None
        return self._as_migration_role(self.bouncer.port, TARGET_DB)

    @property
    def dagster_url(self) -> str:
        assert self.dagster is not None
        return _url(
            user="dagster",
            password=self.passwords["dagster"],
            host=LOOPBACK,
            port=self.dagster.port,
            dbname=DAGSTER_DB,
        )

    def env(self) -> dict[str, str]:
        """The settings a user would export to point the CLI at this stack."""
        values = {
            "SOURCE_DATABASE_URL": self.source_url,
            "SUPABASE_DB_URL": self.target_url,
            "SUPABASE_SSLROOTCERT": str(self.ca_file),
            "DAGSTER_HOME": str(self.dagster_home),
            "DAGSTER_PG_PASSWORD": self.passwords["dagster"],
        }
        if self.pooler_url:
            values["SUPABASE_POOLER_URL"] = self.pooler_url
        return values

    def use_dagster_storage(self) -> None:
        """Let this process open the stack's Dagster instance: its dagster.yaml takes the
        storage password from the environment (`env: DAGSTER_PG_PASSWORD`), as
        deploy/dagster.yaml does. Dagster's own configuration, not one of our settings."""
        os.environ["DAGSTER_PG_PASSWORD"] = self.passwords["dagster"]

    def write_env_file(self, path: Path | None = None) -> Path:
        """A 0600 file of `export` lines: secrets go to disk for the user, never to stdout;
        through a fresh file, never through a name someone put there first."""
        lines = (f"export {key}={_shell_quote(value)}\n" for key, value in self.env().items())
        return write_private(path or self.home / "stack.env", "".join(lines))

    def _save_state(self) -> None:
        state = {
            name: {"port": server.port, "bin": str(server.bin_dir)}
            for name, server in (
                ("source", self.source),
                ("target", self.target),
                ("dagster", self.dagster),
            )
            if server is not None
        }
        if self.bouncer is not None and self.bouncer.pid is not None:
            state["pooler"] = {"port": self.bouncer.port, "pid": self.bouncer.pid}
        write_private(self.home / "stack.json", json.dumps(state, indent=2))
        self.write_env_file()

    def describe(self) -> list[tuple[str, str]]:
        """What runs where, passwords masked: safe to print."""
        rows = [
            ("source", display_url(parse_dsn(self.source_url))),
            ("target (TLS verify-full)", display_url(parse_dsn(self.target_url))),
        ]
        if self.pooler_url:
            rows.append(("pooler (transaction mode)", display_url(parse_dsn(self.pooler_url))))
        rows.append(("dagster storage", display_url(parse_dsn(self.dagster_url))))
        rows.append(("DAGSTER_HOME", str(self.dagster_home)))
        rows.append(("CA certificate", str(self.ca_file)))
        return rows

    @classmethod
    def attach(cls, root: Path) -> DevStack:
        """A stack left running (demo --keep), rebuilt from its state file, e.g. to stop it."""
        state_file = root / "stack.json"
        if not state_file.is_file():
            raise DevstackError(f"{root} holds no stack (no stack.json)")
        state = json.loads(state_file.read_text())
        stack = cls(root=root, keep_root=True)
        for name in ("source", "target", "dagster"):
            if name in state:
                server = PostgresServer(
                    name,
                    root,
                    Path(state[name]["bin"]),
                    stack.user,
                    superuser=TARGET_SUPERUSER if name == "target" else "postgres",
                    port=int(state[name]["port"]),
                )
                setattr(stack, name, server)
        stack.pooler_pid = state.get("pooler", {}).get("pid")
        return stack

    def detach(self) -> None:
        """Leave everything running after we exit (demo --keep)."""
        self.keep_root = True
        atexit.unregister(self.stop)

    def stop(self) -> None:
        """Idempotent: also runs at interpreter exit in case a caller forgot."""
        if self.bouncer is not None:
            self.bouncer.stop()
        if self.pooler_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pooler_pid, signal.SIGTERM)
        for server in (self.dagster, self.target, self.source):
            if server is not None:
                server.stop()
        if self._created_root and not self.keep_root and self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
        atexit.unregister(self.stop)


def _shell_quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"
