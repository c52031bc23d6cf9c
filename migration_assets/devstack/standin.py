"""An application stand-in: a small pool of persistent connections writing like a web app.

Each worker loops INSERT / UPDATE / (sometimes) DELETE of its own `appointments` rows for
existing patients and providers, one transaction each, and journals every write whose COMMIT
returned. A write whose COMMIT failed on a lost connection may or may not have happened: its
row is "in doubt", left alone afterwards, and not checked. Refusals of a read-only database
(SQLSTATE 25006) are counted; a terminated connection is reopened, as a pool would.

The rows' `starts_at` lie in the year 2400 plus a per-stand-in offset, so they never collide
with the seed's rows on UNIQUE (provider_id, starts_at).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

APPLICATION_NAME = "clinic-app-standin"
READ_ONLY_SQLSTATE = "25006"
STATUSES = ("booked", "confirmed", "checked_in", "completed", "cancelled", "no_show")
TABLE = sql.Identifier("public", "appointments")
_EPOCH = datetime(2400, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Ack:
    """One acknowledged write: when its statement started (monotonic) and the row after it."""

    kind: str  # insert | update | delete
    row_id: str
    started: float
    state: tuple[str, str] | None  # (status, location); None once deleted


@dataclass
class _Counters:
    refused: int = 0
    errors: int = 0
    in_doubt: int = 0
    reconnects: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)


class StandIn:
    """Writes continuously to `url` from `connections` threads at `rate` writes/s each."""

    def __init__(self, url: str, *, connections: int = 3, rate: float = 20.0) -> None:
        self.url = url
        self.connections = connections
        self.rate = rate
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._running = threading.Event()
        self._threads: list[threading.Thread] = []
        self._acks: list[Ack] = []
        self._doubt: set[str] = set()
        self._counters = _Counters()
        self._slot = random.randrange(1, 10**6) * 10**7
        self._parents = self._load_parents()

    def _load_parents(self) -> tuple[list[Any], list[Any]]:
        with psycopg.connect(self.url) as conn:
            patients = [r[0] for r in conn.execute("SELECT id FROM patients LIMIT 50")]
            providers = [r[0] for r in conn.execute("SELECT id FROM providers LIMIT 20")]
        assert patients, "the stand-in needs a seeded clinic database"
        assert providers, "the stand-in needs a seeded clinic database"
        return patients, providers

    # --- control -------------------------------------------------------------------------

    def start(self) -> StandIn:
        self._running.set()
        for n in range(self.connections):
            thread = threading.Thread(target=self._worker, args=(n,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def pause(self) -> None:
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    def stop(self) -> None:
        self._stop.set()
        self._running.set()  # wake paused workers so they can exit
        for thread in self._threads:
            thread.join(timeout=30)
        assert not any(t.is_alive() for t in self._threads), "a stand-in worker hangs"

    def __enter__(self) -> StandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- what happened ---------------------------------------------------------------------

    def acked(self) -> dict[str, tuple[str, str] | None]:
        """Every acknowledged row's state now (None: deleted), rows in doubt left out."""
        with self._lock:
            journal: dict[str, tuple[str, str] | None] = {}
            for ack in self._acks:
                journal[ack.row_id] = ack.state
            return {k: v for k, v in journal.items() if k not in self._doubt}

    def acks(self) -> list[Ack]:
        with self._lock:
            return list(self._acks)

    @property
    def refused(self) -> int:
        with self._lock:
            return self._counters.refused

    @property
    def errors(self) -> int:
        with self._lock:
            return self._counters.errors

    def counters(self) -> _Counters:
        with self._lock:
            return _Counters(**{**self._counters.__dict__})

    def wait_until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll `condition` until it holds; fail naming `what` and the counters if not."""
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}: {self.counters()}"
            self._stop.wait(0.05)

    # --- the workers -----------------------------------------------------------------------

    def _worker(self, n: int) -> None:
        rng = random.Random(n + self._slot)
        mine: list[str] = []
        conn: psycopg.Connection[Any] | None = None
        while not self._stop.is_set():
            self._running.wait()
            if self._stop.is_set():
                break
            try:
                if conn is None or conn.closed:
                    conn = self._connect()
                self._one_write(conn, n, rng, mine)
            except psycopg.Error as exc:
                conn = self._after_error(conn, exc)
            self._stop.wait(1.0 / self.rate)
        if conn is not None:
            conn.close()

    def _connect(self) -> psycopg.Connection[Any]:
        conn = psycopg.connect(self.url, application_name=APPLICATION_NAME, connect_timeout=5)
        with self._lock:
            self._counters.reconnects += 1
        return conn

    def _after_error(
        self, conn: psycopg.Connection[Any] | None, exc: psycopg.Error
    ) -> psycopg.Connection[Any] | None:
        with self._lock:
            if exc.sqlstate == READ_ONLY_SQLSTATE:
                self._counters.refused += 1
            else:
                self._counters.errors += 1
                kind = exc.sqlstate or type(exc).__name__
                self._counters.error_kinds[kind] = self._counters.error_kinds.get(kind, 0) + 1
        if conn is None or conn.closed or conn.broken:
            return None
        try:
            conn.rollback()
        except psycopg.Error:
            conn.close()
            return None
        return conn

    def _one_write(
        self, conn: psycopg.Connection[Any], n: int, rng: random.Random, mine: list[str]
    ) -> None:
        started = time.monotonic()
        roll = rng.random()
        if mine and roll < 0.1:
            row_id, state, kind = mine.pop(rng.randrange(len(mine))), None, "delete"
            conn.execute(sql.SQL("DELETE FROM {} WHERE id = %s").format(TABLE), [row_id])
        elif mine and roll < 0.5:
            row_id, kind = mine[rng.randrange(len(mine))], "update"
            state = (rng.choice(STATUSES), f"room {rng.randrange(1000)}")
            conn.execute(
                sql.SQL("UPDATE {} SET status = %s, location = %s WHERE id = %s").format(TABLE),
                [*state, row_id],
            )
        else:
            row_id, kind, state = self._insert(conn, rng)
            mine.append(row_id)
        self._commit(conn, Ack(kind, row_id, started, state))

    def _insert(
        self, conn: psycopg.Connection[Any], rng: random.Random
    ) -> tuple[str, str, tuple[str, str]]:
        patients, providers = self._parents
        with self._lock:
            self._slot += 1
            starts_at = _EPOCH + timedelta(microseconds=self._slot)
        state = ("booked", f"room {rng.randrange(1000)}")
        row = conn.execute(
            sql.SQL(
                "INSERT INTO {} (patient_id, provider_id, starts_at, status, location)"
                " VALUES (%s, %s, %s, %s, %s) RETURNING id::text"
            ).format(TABLE),
            [rng.choice(patients), rng.choice(providers), starts_at, *state],
        ).fetchone()
        assert row is not None
        return str(row[0]), "insert", state

    def _commit(self, conn: psycopg.Connection[Any], ack: Ack) -> None:
        """COMMIT; journal it if it returned, mark the row in doubt if the link broke."""
        try:
            conn.commit()
        except psycopg.OperationalError:
            with self._lock:
                self._doubt.add(ack.row_id)
                self._counters.in_doubt += 1
            raise
        with self._lock:
            self._acks.append(ack)


def assert_journal_on(url: str, journal: dict[str, tuple[str, str] | None]) -> int:
    """Every acknowledged write is on the database at `url` as journaled; returns how many.

    Rows journaled with a state must be there with that status and location; rows journaled
    as deleted must be absent. Mismatches are reported by row id only (no row values).
    """
    with psycopg.connect(url) as conn:
        found = {
            str(r[0]): (str(r[1]), str(r[2]))
            for r in conn.execute(
                sql.SQL(
                    "SELECT id::text, status, location FROM {} WHERE id = ANY(%s::uuid[])"
                ).format(TABLE),
                [list(journal)],
            )
        }
    wrong = sorted(k for k, v in journal.items() if found.get(k) != v)
    assert not wrong, f"{len(wrong)} acknowledged write(s) not on {url.split('@')[-1]}: {wrong[:5]}"
    return len(journal)
