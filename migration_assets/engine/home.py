"""The Dagster instance in DAGSTER_HOME, as the migration's commands use it.

Dagster is imported inside the functions that use it: `migrate` prepares its environment
and starts its workers before its own second of importing Dagster (`engine.local`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from migration_assets.private import private_dir, write_private
from migration_assets.settings import Settings

if TYPE_CHECKING:
    import dagster as dg

FRESH_HOME_YAML = """\
# Written by migration-assets into an empty DAGSTER_HOME: Dagster's default storage
# (SQLite in this directory), no usage telemetry, and no stdout capture (our steps log
# through the event log; capturing costs subprocesses for every step).
telemetry:
  enabled: false
compute_logs:
  module: dagster._core.storage.noop_compute_log_manager
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


def prepare_process(settings: Settings, plan_path: Path) -> None:
    """What every process of one migration inherits: the settings in the environment
    (resources read secrets from it at run time), the plan's path, DAGSTER_HOME's config."""
    settings.require("SOURCE_DATABASE_URL", "SUPABASE_DB_URL", "DAGSTER_HOME")
    settings.export_environment()
    os.environ["MIGRATION_PLAN"] = str(plan_path.resolve())
    assert settings.dagster_home is not None
    prepare_dagster_home(settings.dagster_home)


def open_instance() -> dg.DagsterInstance:
    """The instance at DAGSTER_HOME, with a small storage connection pool.

    dagster-postgres opens a new connection for every storage call by default (NullPool),
    about 70 per run: more than the copy of a small slice costs. A long-lived process may
    hold a small pool, as the webserver does.
    """
    import dagster as dg

    instance = dg.DagsterInstance.get()
    instance.optimize_for_webserver(statement_timeout=120_000, pool_recycle=3600, max_overflow=4)
    remember_schema(instance)
    return instance


# Storage methods that ask the database whether one of the storage's own tables or columns
# exists, on every call: per partition run, about 60 catalog reflections, and a second
# connection opened and closed for each materialization (`has_table` runs inside a
# transaction that already holds the pool's one connection).
SCHEMA_PROBES = {
    "event_log_storage": ("has_table", "has_asset_key_col"),
    "run_storage": (
        "has_run_stats_index_cols",
        "has_backfill_id_column",
        "has_bulk_actions_selector_cols",
        "has_bulk_action_job_name_column",
        "has_backfill_tags_table",
    ),
}


def remember_schema(instance: dg.DagsterInstance) -> None:
    """Answer "yes" from memory once the storage has said it: a table or column that exists
    does not vanish while a command runs, and one that is missing is asked about again (an
    upgrade may add it). A probe this version of Dagster lacks is skipped."""
    for storage_name, probes in SCHEMA_PROBES.items():
        storage = getattr(instance, storage_name)
        for name in probes:
            probe = getattr(storage, name, None)
            if callable(probe):
                setattr(storage, name, _remember_yes(probe))


def _remember_yes(probe: Callable[..., bool]) -> Callable[..., bool]:
    known: set[tuple[Any, ...]] = set()

    @functools.wraps(probe)
    def remembered(*args: Any, **kwargs: Any) -> bool:
        question = (args, tuple(sorted(kwargs.items())))
        if question in known:
            return True
        found = bool(probe(*args, **kwargs))
        if found:
            known.add(question)
        return found

    return remembered


def apply_pool_limit(instance: dg.DagsterInstance, limit: int) -> bool:
    """Set the `supabase_target` pool's limit: every step that touches the target holds one
    slot while it runs, whichever process or host runs it. False when the instance's storage
    cannot enforce pools (then the limit is only as good as the worker count)."""
    from migration_assets.defs.keys import TARGET_POOL

    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return False
    storage.set_concurrency_slots(TARGET_POOL, limit)
    return True
