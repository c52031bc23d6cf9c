"""PgBouncer in transaction mode in front of the target: our stand-in for Supabase's 6543.

It reproduces what matters to the application: no session state between transactions,
so prepared statements break unless the client disables them, and TLS on both legs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from migration_assets.devstack.binaries import DevstackError, ServiceUser
from migration_assets.devstack.cluster import LOOPBACK, free_port
from migration_assets.private import write_private

CONFIG = """
[databases]
* = host={host} port={server_port}

[pgbouncer]
listen_addr = {host}
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {home}/userlist.txt
pool_mode = transaction
max_client_conn = 200
default_pool_size = 10
ignore_startup_parameters = extra_float_digits,options
client_tls_sslmode = require
client_tls_cert_file = {home}/server.crt
client_tls_key_file = {home}/server.key
server_tls_sslmode = verify-full
server_tls_ca_file = {ca}
logfile = {home}/pgbouncer.log
log_connections = 0
log_disconnections = 0
"""


def pgbouncer_binary() -> str | None:
    """PgBouncer from PATH or Debian's /usr/sbin, which is not on every user's PATH."""
    found = shutil.which("pgbouncer")
    if found:
        return found
    return "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None


@dataclass
class PgBouncer:
    home: Path
    user: ServiceUser
    server_port: int
    ca_file: Path
    tls_files: tuple[Path, Path]
    credentials: dict[str, str]
    port: int = field(default_factory=free_port)
    _proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> None:
        binary = pgbouncer_binary()
        if binary is None:
            raise DevstackError("pgbouncer is not installed (Debian: apt-get install pgbouncer)")
        self.home.mkdir(parents=True, exist_ok=True)
        self.home.chmod(0o755)
        # 0600 from the first byte: the key and the passwords are never readable by others
        for src, dest in zip(self.tls_files, ("server.crt", "server.key"), strict=True):
            write_private(self.home / dest, src.read_bytes())
        users = "".join(f'"{u}" "{p}"\n' for u, p in self.credentials.items())
        write_private(self.home / "userlist.txt", users)
        write_private(
            self.home / "pgbouncer.ini",
            CONFIG.format(
                host=LOOPBACK,
                server_port=self.server_port,
                port=self.port,
                home=self.home,
                ca=self.ca_file,
            ),
        )
        if self.user.switches:
            for path in [self.home, *self.home.iterdir()]:
                os.chown(path, self.user.uid or 0, self.user.gid or 0)
        kwargs: dict[str, Any] = {}
        if self.user.switches:
            kwargs = {"user": self.user.uid, "group": self.user.gid, "extra_groups": []}
        self._proc = subprocess.Popen(
            [binary, str(self.home / "pgbouncer.ini")],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            cwd="/",
            **kwargs,
        )
        self._wait_listening(timeout)

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise DevstackError(
                    f"pgbouncer exited with {self._proc.returncode}; see {self.home}/pgbouncer.log"
                )
            try:
                import socket

                with socket.create_connection((LOOPBACK, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise DevstackError(f"pgbouncer did not listen on {self.port}; see {self.home}")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def stop(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=10)

    def url(self, user: str, password: str, dbname: str, sslrootcert: Path) -> str:
        return psycopg.conninfo.make_conninfo(
            host=LOOPBACK,
            port=self.port,
            user=user,
            password=password,
            dbname=dbname,
            sslmode="verify-full",
            sslrootcert=str(sslrootcert),
        )
