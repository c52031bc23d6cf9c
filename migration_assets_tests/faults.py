"""Fault injection for tests: a TCP proxy that cuts or hangs, slow COPYs, COPY watchers."""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import psycopg
import pytest
from psycopg import sql

from migration_assets_tests.waiting import wait_until

SLOW_FUNCTION = """
CREATE OR REPLACE FUNCTION public.test_slow_copy() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_sleep(%s); RETURN NEW; END $$
"""


def slow_down(target_url: str, table: str, seconds_per_row: float) -> None:
    """An ALWAYS trigger fires even under session_replication_role = replica: COPY into
    `table` slows down without any row changing."""
    with psycopg.connect(target_url, autocommit=True) as conn:
        conn.execute(SLOW_FUNCTION.replace("%s", repr(seconds_per_row)).encode())
        rel = sql.Identifier(*table.split("."))
        conn.execute(
            sql.SQL(
                "CREATE TRIGGER test_slow BEFORE INSERT ON {} "
                "FOR EACH ROW EXECUTE FUNCTION public.test_slow_copy()"
            ).format(rel)
        )
        conn.execute(sql.SQL("ALTER TABLE {} ENABLE ALWAYS TRIGGER test_slow").format(rel))


REFUSE_FUNCTION = """
CREATE OR REPLACE FUNCTION public.test_refuse_copy() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'test: this table refuses rows'; END $$
"""


def refuse_copy(target_url: str, table: str) -> None:
    """COPY into `table` fails (an ALWAYS trigger that raises), every other table copies."""
    with psycopg.connect(target_url, autocommit=True) as conn:
        conn.execute(REFUSE_FUNCTION.encode())
        rel = sql.Identifier(*table.split("."))
        conn.execute(
            sql.SQL(
                "CREATE TRIGGER test_slow BEFORE INSERT ON {} "
                "FOR EACH ROW EXECUTE FUNCTION public.test_refuse_copy()"
            ).format(rel)
        )
        conn.execute(sql.SQL("ALTER TABLE {} ENABLE ALWAYS TRIGGER test_slow").format(rel))


def speed_up(target_url: str, table: str) -> None:
    """Undo `slow_down` or `refuse_copy`."""
    with psycopg.connect(target_url, autocommit=True) as conn:
        rel = sql.Identifier(*table.split("."))
        conn.execute(sql.SQL("DROP TRIGGER IF EXISTS test_slow ON {}").format(rel))


def wait_for_copy(
    admin_conninfo: str, dbname: str, timeout: float = 90.0, *, into: str | None = None
) -> int:
    """The pid of a migration backend that is inside COPY ... FROM STDIN on `dbname` (into
    the table `into`, "schema.name", if given: another table's COPY may end at once)."""
    target = "%" if into is None else '"' + '"."'.join(into.split(".")) + '"%'
    with psycopg.connect(admin_conninfo, autocommit=True) as conn:

        def copying() -> int | None:
            row = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = %s "
                "AND application_name = 'migration_assets' AND query LIKE %s "
                "AND state = 'active' LIMIT 1",
                [dbname, f"COPY {target}FROM STDIN%"],
            ).fetchone()
            return int(row[0]) if row else None

        pid = wait_until(copying, timeout, f"a COPY into {into or 'the target'}", every=0.02)
    assert pid is not None
    return pid


@dataclass
class TcpProxy:
    """127.0.0.1:port -> upstream. `cut()` resets every connection; `hang()` stops moving
    bytes without closing anything (a silent network); `resume()` forwards again."""

    upstream: tuple[str, int]
    port: int = 0
    _server: socket.socket | None = None
    _pairs: list[tuple[socket.socket, socket.socket]] = field(default_factory=list)
    _hang: threading.Event = field(default_factory=threading.Event)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # what happened, for a failure's message: accepts, refusals, why each pair ended (bytes)
    events: list[str] = field(default_factory=list)

    def __enter__(self) -> TcpProxy:
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen(64)
        self.port = int(self._server.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.cut()
        if self._server is not None:
            self._server.close()

    def _accept(self) -> None:
        assert self._server is not None
        while not self._stop.is_set():
            try:
                client, peer = self._server.accept()
            except OSError as exc:
                self._record(f"accept: {exc!r}")
                return
            self._record(f"accepted from port {peer[1]}")
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError as exc:
                self._record(f"refused: upstream connect: {exc!r}")
                client.close()
                continue
            # the timeout was for connecting only: a server slow to read (a slowed COPY on a
            # busy machine) must hold the bytes back, as a network does, not end the pump
            server.settimeout(None)
            with self._lock:
                self._pairs.append((client, server))
            threading.Thread(target=self._pump, args=(client, server), daemon=True).start()

    def _record(self, what: str) -> None:
        self.events.append(f"{time.strftime('%H:%M:%S')} {what}")

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        """Bytes both ways until either side closes; then both are closed, as a TCP link
        ends for both of its ends: a pump that stopped silently would leave a connection
        that neither moves nor breaks."""
        moved = {"up": 0, "down": 0}
        why = "stopped"
        try:
            while not self._stop.is_set():
                if self._hang.is_set():
                    time.sleep(0.05)
                    continue
                ready, _, _ = select.select([a, b], [], [], 0.1)
                for src in ready:
                    data = src.recv(65536)
                    side = "up" if src is a else "down"
                    if not data:
                        why = f"{'client' if src is a else 'server'} closed"
                        return
                    (b if src is a else a).sendall(data)
                    moved[side] += len(data)
        except (OSError, ValueError) as exc:
            why = repr(exc)
        finally:
            self._record(f"{why}, {moved}")
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.close()

    def cut(self) -> None:
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    sock.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
                    sock.close()  # linger 0: an RST, as a dropped route would cause

    def hang(self) -> None:
        self._hang.set()

    def resume(self) -> None:
        self._hang.clear()


@contextlib.contextmanager
def blackhole(port: int) -> Iterator[None]:
    """Drop every packet to and from `port`: a network that goes silent, with nobody left
    to acknowledge anything (only keepalives and TCP user timeouts can notice)."""
    iptables = shutil.which("iptables")
    if iptables is None or os.geteuid() != 0:
        if os.environ.get("MIGRATION_ASSETS_CI"):
            pytest.fail("CI must run as root with iptables (apt-get install iptables)")
        pytest.skip("needs root and iptables to drop packets")
    rules = [
        ["OUTPUT", "-p", "tcp", "--dport", str(port), "-j", "DROP"],
        ["OUTPUT", "-p", "tcp", "--sport", str(port), "-j", "DROP"],
    ]
    for rule in rules:
        subprocess.run([iptables, "-I", *rule], check=True)
    try:
        yield
    finally:
        for rule in rules:
            subprocess.run([iptables, "-D", *rule], check=False)
