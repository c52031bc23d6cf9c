"""The Dagster instance in DAGSTER_HOME, as the migration's commands use it.

Dagster is imported inside the functions that use it: `migrate` prepares its environment
and starts its workers before its own second of importing Dagster (`engine.local`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from migration_assets.private import private_dir, write_private
from migration_assets.settings import Settings

if TYPE_CHECKING:
    import dagster as dg

FRESH_HOME_YAML = """\
# Written by migration-assets into an empty DAGSTER_HOME: Dagster's default storage
# (SQLite in this directory), no usage telemetry, no stdout capture (our steps log
# through the event log; capturing costs subprocesses for every step), and Dagster's
# default run queue, looked at every second instead of every 5 s.
telemetry:
  enabled: false
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    dequeue_interval_seconds: 1
compute_logs:
  module: dagster.core.storage.noop_compute_log_manager
  class: NoOpComputeLogManager
"""


def prepare_dagster_home(home: Path) -> None:
    """An empty DAGSTER_HOME works as Dagster defaults it, except that a tool for patient
    data does not phone home, and does not pay for stdout capture it never uses.

    The directory is made 0700, an existing one too: its storage, run logs, audit reports
    and key secret are the migration's record of patient tables, and files Dagster creates
    there follow the process umask (which the CLI sets to 077, but a bare `dagster` may not)."""
    private_dir(home)
    config = home / "dagster.yaml"
    if not config.exists():
        write_private(config, FRESH_HOME_YAML)


def prepare_process(settings: Settings) -> Path:
    """What a migration's process needs before Dagster: the settings it cannot do without,
    and DAGSTER_HOME's config; that home."""
    settings.require("SOURCE_DATABASE_URL", "SUPABASE_DB_URL", "DAGSTER_HOME")
    assert settings.dagster_home is not None
    prepare_dagster_home(settings.dagster_home)
    return settings.dagster_home


def open_instance(home: Path) -> dg.DagsterInstance:
    """The instance at DAGSTER_HOME, with a small storage connection pool and the storage's
    answers about its own schema remembered (both in `defs.compat`: no public API has them).

    Measured with `benchmarks/run.py --small-only` (14 one-slice tables): without both, a
    cold migrate took 3.5x as long (Dagster's bookkeeping 2.7 s per run instead of 0.3 s);
    with the pool alone, its runs still spent about twice as long in Dagster's bookkeeping.
    """
    import dagster as dg

    from migration_assets.defs.compat import pool_storage_connections, remember_storage_schema

    with _one_opener_at_a_time(home):
        instance = dg.DagsterInstance.from_config(str(home))
    pool_storage_connections(instance)
    remember_storage_schema(instance)
    return instance


@contextlib.contextmanager
def _one_opener_at_a_time(home: Path) -> Iterator[None]:
    """Dagster creates an empty DAGSTER_HOME's storage on first open, unguarded: two commands
    started together (`ui` in one shell, `migrate` in another) failed with "table runs
    already exists", or stamped the storage's schema twice so that every later open failed
    ("more than one head"). Our processes open the instance one at a time on this host."""
    lock = os.open(home / ".open.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
    finally:
        os.close(lock)  # releases the lock


def apply_pool_limit(instance: dg.DagsterInstance, limit: int) -> bool:
    """Set the `supabase_target` pool's limit: every step that touches the target holds one
    slot while it runs, whichever process or host runs it. False when the instance's storage
    cannot enforce pools (then the limit is only as good as the worker count)."""
    from migration_assets.defs.compat import set_pool_limit
    from migration_assets.defs.keys import TARGET_POOL

    return set_pool_limit(instance, TARGET_POOL, limit)
