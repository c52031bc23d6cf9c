"""Fault injection for tests: a TCP proxy that cuts, a silent network, slow COPYs."""

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


LINGER_ZERO = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # struct linger {on, 0 s}: close sends RST


@dataclass
class _Pair:
    """One proxied connection; only its pump thread touches (and closes) its sockets."""

    client: socket.socket
    server: socket.socket
    reset: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def alive(self) -> bool:
        return self.thread is not None and self.thread.is_alive()


@dataclass
class TcpProxy:
    """127.0.0.1:port -> upstream. `cut()` resets every connection, as a dropped route would.

    Every socket is closed by the one thread that uses it, and every thread has ended when
    `cut()` or the proxy's exit returns. A socket closed under a thread blocked on it is not
    released: the thread keeps a descriptor number that the kernel hands to the next socket
    this process opens. A proxy's accept thread left blocked that way served a later test's
    listener, and reset the connection of that test's `migrate` (which runs in this process)
    before its own proxy ever saw it."""

    upstream: tuple[str, int]
    port: int = 0
    _server: socket.socket | None = None
    _accepter: threading.Thread | None = None
    _pairs: list[_Pair] = field(default_factory=list)
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
        self._accepter = threading.Thread(target=self._accept, name="proxy-accept", daemon=True)
        self._accepter.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.cut()
        accepter = self._accepter
        if accepter is not None:
            wait_until(lambda: not accepter.is_alive(), 30, "the proxy's accept thread to end")
        if self._server is not None:
            self._server.close()

    def _accept(self) -> None:
        """Accepts while the proxy runs; a short select, never a blocking accept, so that it
        sees the stop and ends before the listening socket is closed."""
        assert self._server is not None
        while not self._stop.is_set():
            ready, _, _ = select.select([self._server], [], [], 0.1)
            if not ready:
                continue
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
            pair = _Pair(client, server)
            pair.thread = threading.Thread(target=self._pump, args=(pair,), daemon=True)
            with self._lock:  # a cut sees every pair whose pump has started
                pair.thread.start()
                self._pairs.append(pair)

    def _record(self, what: str) -> None:
        self.events.append(f"{time.strftime('%H:%M:%S')} {what}")

    def _pump(self, pair: _Pair) -> None:
        """Bytes both ways until either side closes or the pair is cut; then both sockets
        are closed here, as a TCP link ends for both of its ends. Non-blocking sends of what
        is pending, so a peer that stopped reading (a blackholed client) never holds this
        thread where it cannot see a cut."""
        a, b = pair.client, pair.server
        other = {a: b, b: a}
        pending: dict[socket.socket, bytearray] = {a: bytearray(), b: bytearray()}
        moved = {"up": 0, "down": 0}
        why = "stopped"
        for sock in (a, b):
            sock.setblocking(False)
        try:
            while not (pair.reset.is_set() or self._stop.is_set()):
                readers = [s for s in (a, b) if not pending[other[s]]]  # back-pressure
                writers = [s for s in (a, b) if pending[s]]
                readable, writable, _ = select.select(readers, writers, [], 0.1)
                for sock in writable:
                    del pending[sock][: sock.send(pending[sock])]
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        why = f"{'client' if sock is a else 'server'} closed"
                        return
                    pending[other[sock]] += data
                    moved["up" if sock is a else "down"] += len(data)
            why = "cut"
            for sock in (a, b):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)
        except OSError as exc:
            why = repr(exc)
        finally:
            self._record(f"{why}, {moved}")
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.close()

    def cut(self) -> None:
        """Reset every open connection (an RST each way); returns once each has ended."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            pair.reset.set()
        wait_until(lambda: not any(p.alive() for p in pairs), 30, "every cut connection to end")


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
