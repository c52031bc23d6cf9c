"""Waiting for a condition, never for a time: CI machines and newcomers' laptops are busy.

`wait_until` is the one loop; the rest name the conditions tests wait for most: a server
session, a process or a server that must be gone before the test may go on (a backend ends
after its client has gone, not at once; so does a killed process's last child).
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterable
from typing import Any

import psycopg


def wait_until[T](condition: Callable[[], T], timeout: float, what: str, every: float = 0.05) -> T:
    """`condition()`'s first truthy value, polled every `every` seconds; after `timeout`
    seconds without one, the test fails naming `what` and the last value seen."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} ({value!r})")
        time.sleep(every)


def sessions_gone(
    conn: psycopg.Connection[Any],
    pids: Iterable[int],
    timeout: float = 60,
    what: str = "server sessions",
) -> None:
    """Every backend in `pids` has ended (its client closing is not its end). Asked over
    `conn`, an open autocommit session: a session opened to ask would be one more to end."""
    wanted = [int(p) for p in pids]

    def gone() -> bool:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", [wanted]
        ).fetchone()
        return row == (0,)

    wait_until(gone, timeout, f"{what} {wanted} to end")


def process_gone(proc: subprocess.Popen[Any] | int, timeout: float = 60) -> None:
    """The process has exited (and, for a child of ours, been reaped)."""
    if isinstance(proc, subprocess.Popen):
        child = proc
        wait_until(lambda: child.poll() is not None, timeout, f"process {child.pid} to exit")
        return
    pid = proc
    wait_until(lambda: not _alive(pid), timeout, f"process {pid} to exit")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited: only its parent has not read its status yet
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def port_closed(port: int, timeout: float = 60, host: str = "127.0.0.1") -> None:
    """Nothing listens on `port` any more: the server that held it is gone."""

    def closed() -> bool:
        with socket.socket() as sock:
            sock.settimeout(1)
            return sock.connect_ex((host, port)) != 0

    wait_until(closed, timeout, f"{host}:{port} to close")
