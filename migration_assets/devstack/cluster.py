"""One throwaway PostgreSQL server: initdb, configure, start, stop.

Tuned for speed and for privacy, not durability: fsync is off (the data is synthetic
and recreated at will), and the server never logs statements or error details, so no
row value can reach its log.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from migration_assets.devstack.binaries import DevstackError, ServiceUser, server_version
from migration_assets.private import write_private

LOOPBACK = "127.0.0.1"

BASE_CONF = """
listen_addresses = '{listen}'
port = {port}
unix_socket_directories = '{socket_dir}'
max_connections = 120
shared_buffers = 128MB
maintenance_work_mem = 128MB
max_wal_size = 4GB
checkpoint_timeout = 30min
fsync = off
synchronous_commit = off
full_page_writes = off
wal_level = minimal
max_wal_senders = 0
logging_collector = off
log_min_messages = warning
log_min_error_statement = panic
log_error_verbosity = terse
log_statement = none
log_connections = off
password_encryption = 'scram-sha-256'
"""

TLS_CONF = """
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
ssl_min_protocol_version = 'TLSv1.2'
"""

HBA_PLAIN = """
local all all trust
host all all 127.0.0.1/32 scram-sha-256
host all all ::1/128 scram-sha-256
"""

# TCP without TLS is refused outright, as on a Supabase project with SSL enforcement on.
HBA_TLS_ONLY = """
local all all trust
hostssl all all 127.0.0.1/32 scram-sha-256
hostssl all all ::1/128 scram-sha-256
hostnossl all all 0.0.0.0/0 reject
hostnossl all all ::/0 reject
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


@dataclass
class PostgresServer:
    """A server under `root/name`, run by `user`, reachable by its superuser over a socket."""

    name: str
    root: Path
    bin_dir: Path
    user: ServiceUser
    superuser: str = "postgres"
    tls_files: tuple[Path, Path] | None = None  # (server.crt, server.key) to copy in
    tls_only: bool = True  # with tls_files: refuse TCP without TLS (False: offer it only)
    port: int = field(default_factory=free_port)
    extra_conf: str = ""

    @property
    def home(self) -> Path:
        return self.root / self.name

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def socket_dir(self) -> Path:
        return self.home / "sock"

    @property
    def log_file(self) -> Path:
        return self.home / "server.log"

    @property
    def version(self) -> int:
        return server_version(self.bin_dir)

    def _run(self, args: Sequence[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a PostgreSQL tool as the service user; its output stays out of our logs."""
        kwargs: dict[str, Any] = {}
        if self.user.switches:
            kwargs = {"user": self.user.uid, "group": self.user.gid, "extra_groups": []}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C", "TZ": "UTC"}
        proc = subprocess.run(
            list(args), capture_output=True, text=True, env=env, cwd="/", check=False, **kwargs
        )
        if check and proc.returncode != 0:
            raise DevstackError(
                f"{Path(args[0]).name} failed for the {self.name} server "
                f"(exit {proc.returncode}): {proc.stderr.strip()[-800:]}\n"
                f"server log: {self.log_file}"
            )
        return proc

    def _own(self, *paths: Path) -> None:
        if self.user.switches:
            for path in paths:
                os.chown(path, self.user.uid or 0, self.user.gid or 0)

    def init(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.home.chmod(0o755)
        self.socket_dir.mkdir(exist_ok=True)
        self.socket_dir.chmod(0o700)
        self._own(self.home, self.socket_dir)
        self._run(
            [
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                self.superuser,
                "-E",
                "UTF8",
                "--no-locale",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--no-sync",
            ]
        )
        conf = BASE_CONF.format(listen=LOOPBACK, port=self.port, socket_dir=self.socket_dir)
        hba = HBA_PLAIN
        if self.tls_files is not None:
            conf += TLS_CONF
            hba = HBA_TLS_ONLY if self.tls_only else HBA_PLAIN
            for src, dest in zip(self.tls_files, ("server.crt", "server.key"), strict=True):
                target = self.data_dir / dest
                shutil.copyfile(src, target)
                target.chmod(0o600)
                self._own(target)
        conf += self.extra_conf
        self._write(self.data_dir / "devstack.conf", conf)
        self._write(self.data_dir / "pg_hba.conf", hba)
        with (self.data_dir / "postgresql.conf").open("a") as fh:
            fh.write("\ninclude = 'devstack.conf'\n")

    def _write(self, path: Path, text: str) -> None:
        write_private(path, text)
        self._own(path)

    def set_port(self, port: int) -> None:
        conf = self.data_dir / "devstack.conf"
        text = conf.read_text().replace(f"port = {self.port}\n", f"port = {port}\n")
        self._write(conf, text)
        self.port = port

    def start(self, *, attempts: int = 3) -> None:
        if not self.log_file.exists():
            self.log_file.touch()
            self._own(self.log_file)
        for attempt in range(attempts):
            proc = self._run(
                [
                    str(self.bin_dir / "pg_ctl"),
                    "start",
                    "-w",
                    "-t",
                    "60",
                    "-D",
                    str(self.data_dir),
                    "-l",
                    str(self.log_file),
                ],
                check=False,
            )
            if proc.returncode == 0:
                return
            if "could not bind" in self.log_file.read_text() and attempt + 1 < attempts:
                self.set_port(free_port())  # lost a race for the port: take another
                continue
            raise DevstackError(
                f"the {self.name} server did not start: {proc.stderr.strip()[-500:]}\n"
                f"see {self.log_file}"
            )

    def stop(self, mode: str = "fast") -> None:
        if not (self.data_dir / "postmaster.pid").exists():
            return
        self._run(
            [
                str(self.bin_dir / "pg_ctl"),
                "stop",
                "-w",
                "-t",
                "30",
                "-m",
                mode,
                "-D",
                str(self.data_dir),
            ],
            check=False,
        )
        if (self.data_dir / "postmaster.pid").exists() and mode != "immediate":
            self.stop("immediate")

    def is_running(self) -> bool:
        proc = self._run(
            [str(self.bin_dir / "pg_ctl"), "status", "-D", str(self.data_dir)], check=False
        )
        return proc.returncode == 0

    def admin_conninfo(self, dbname: str = "postgres") -> str:
        """The superuser over the Unix socket: trust auth, no password to leak."""
        return psycopg.conninfo.make_conninfo(
            host=str(self.socket_dir), port=self.port, user=self.superuser, dbname=dbname
        )

    def admin(self, sql: str, dbname: str = "postgres") -> None:
        with psycopg.connect(self.admin_conninfo(dbname), autocommit=True) as conn:
            conn.execute(sql.encode())

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.admin_conninfo(), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.home, ignore_errors=True)
