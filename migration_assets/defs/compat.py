"""Every use of Dagster's internals, in one place: what Dagster 1.13 offers no public API for.

DESIGN.md: use Dagster's public API (what `import dagster` exports, and documented YAML);
where none exists, keep the workaround here and name the public API it waits for. Each entry
says what the migration needs it for and, as `# waits for:`, what would replace it: once that
exists, the entry goes and its callers use the public API. `test_layout_unit.py` fails on a
`dagster._` import or module path, a private attribute of a Dagster object, or one of the
storage objects below anywhere else in the package.

Dagster is imported when this module loads: code that must load without it (`engine.local`,
`engine.home`, the CLI) imports this module inside the functions that need it.

Not here because it is YAML: `compute_logs` in every dagster.yaml we write or ship names
`dagster.core.storage.noop_compute_log_manager`, the spelling of Dagster's own dagster.yaml
reference (Dagster maps `dagster.core` to its internal package, and writes that spelling back
when it serializes the config). # waits for: `dagster.NoOpComputeLogManager` (`module: dagster`)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import dagster as dg
from dagster._core.storage.asset_check_execution_record import (
    AssetCheckExecutionRecord,
    AssetCheckExecutionRecordStatus,
)

__all__ = [
    "AssetCheckExecutionRecord",
    "AssetCheckExecutionRecordStatus",
    "fail_run",
    "free_pool_slots",
    "latest_check_executions",
    "pool_holders",
    "pool_storage_connections",
    "remember_storage_schema",
    "set_pool_limit",
]

# ------------------------------------------------------------------ the instance's storage


def pool_storage_connections(instance: dg.DagsterInstance) -> None:
    """A small connection pool for the instance's storage, as the webserver holds one.

    dagster-postgres opens a connection for every storage call (NullPool), about 70 per run:
    more than copying a small slice costs. A long-lived `migrate` or worker keeps a few open.
    """
    # waits for: a connection pool setting of dagster-postgres storage in dagster.yaml (this
    # method is what dagster-webserver calls on its own instance). Measured on the benchmark's
    # small database (14 one-slice tables): without it and `remember_storage_schema`, a cold
    # migrate took 9.4 s instead of 2.7 s
    instance.optimize_for_webserver(statement_timeout=120_000, pool_recycle=3600, max_overflow=4)


# Storage methods that ask the database whether one of the storage's own tables or columns
# exists, on every call: per partition run about 60 catalog reflections, and a second
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


def remember_storage_schema(instance: dg.DagsterInstance) -> None:
    """Answer "yes" from memory once the storage has said it: a table or column that exists
    does not vanish while a command runs, and one that is missing is asked about again (an
    upgrade may add it). A probe this version of Dagster lacks is skipped."""
    # waits for: dagster-postgres storage that checks its schema once when it opens (or a
    # setting for it); until then its methods are wrapped here, on this instance only.
    # Measured with the pool alone: Dagster's bookkeeping took 0.6-0.8 s per run, 0.3-0.4 s
    # with this too
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


# ------------------------------------------------------------------ runs whose worker died
# `defs.liveness`: a run whose heartbeat stopped is failed and its pool slots freed, by the
# sensor `lost_migration_runs` and by `migrate` before it plans work.


def fail_run(instance: dg.DagsterInstance, run: dg.DagsterRun, message: str) -> None:
    """Mark a run FAILED (its partitions then show FAILED, so they are redone)."""
    # waits for: a public way to fail a run whose worker is gone; run monitoring does it only
    # for launchers that can ask their platform (Docker, Kubernetes, ECS), and the GraphQL
    # `terminateRun` marks it CANCELED through a webserver
    instance.report_run_failed(run, message)


def free_pool_slots(instance: dg.DagsterInstance, run_id: str) -> None:
    """Free every pool slot the run holds: a dead worker never releases its own."""
    # waits for: run monitoring's `free_slots_after_run_end_seconds` where no daemon runs
    # (`migrate` alone), or a public DagsterInstance method that frees a run's slots
    instance.event_log_storage.free_concurrency_slots_for_run(run_id)


# ------------------------------------------------------------------ the supabase_target pool


def pool_holders(instance: dg.DagsterInstance, pool: str) -> set[str]:
    """Ids of the runs holding a slot of `pool` now (none where storage has no pools)."""
    # waits for: a public read of a pool's state (the UI's Concurrency page has it by GraphQL)
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return set()
    return set(storage.get_concurrency_info(pool).active_run_ids)


def set_pool_limit(instance: dg.DagsterInstance, pool: str, limit: int) -> bool:
    """Set `pool`'s limit; False where the instance's storage cannot enforce pools."""
    # waits for: a public DagsterInstance method to set a pool's limit. The public route is
    # `dagster instance concurrency set POOL N`, which makes exactly this call, but in a
    # second process: 2.4 s (1.4 CPU s) of imports measured, on every `migrate`, whose whole
    # cold run of a small database takes 2.7 s
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return False
    storage.set_concurrency_slots(pool, limit)
    return True


# ------------------------------------------------------------------ check verdicts


def latest_check_executions(
    instance: dg.DagsterInstance, keys: Sequence[dg.AssetCheckKey]
) -> dict[dg.AssetCheckKey, AssetCheckExecutionRecord]:
    """Each check's latest execution (planned, or evaluated with its event), in one query:
    the audit report's verdicts (`defs.evidence`)."""
    # waits for: a public DagsterInstance method for checks' latest executions (the UI reads
    # them by GraphQL); `AssetCheckExecutionRecord` and its status with it
    found = instance.event_log_storage.get_latest_asset_check_execution_by_key(list(keys))
    return dict(found)
