"""Which process drives a migration's runs, and whether it has exited.

Between two runs of one migration nothing is in flight, so `migrate` looks twice before it
believes no other migration is at work, when a run started or ended just now. A run names
the process that drove it (the `migrate`, `verify` or `cutover` command; its workers die
with it), so a run whose driver has exited cannot be followed by another, and the second
look is needed only for runs from a live driver, another host, or the UI.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

TAG_DRIVER = "migration_assets/driver"


def this_process() -> str:
    """host/pid/start: the start time tells a reused pid from the process that had it."""
    pid = os.getpid()
    return f"{socket.gethostname()}/{pid}/{_started(pid) or ''}"


def has_exited(driver: str | None) -> bool:
    """True only when sure: a process of this host whose pid is gone, or now another
    process's. Unknown (no tag, another host, no /proc) counts as alive."""
    if not driver:
        return False
    parts = driver.rsplit("/", 2)
    if len(parts) != 3 or not parts[1].isdigit() or not parts[2]:
        return False
    host, pid, started = parts
    if host != socket.gethostname() or not Path("/proc/self/stat").exists():
        return False
    return _started(int(pid)) != started


def _started(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat;
    the name in field 2 may hold spaces and parentheses, so fields count from its end)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None
