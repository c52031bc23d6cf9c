"""Which runs of the graph are due, in the order a UI "Materialize all" backfill runs them.

head: the preflight and the schema (with its blocking checks), in one run;
body: a run per table partition that is not verified (missing or failed; with `every`,
      all of them, each of which re-copies only if its slice differs); small tables, whose
      one slice shares its partition key with every other table's only slice, travel
      several to a run (`carry`), each still its own verified asset partition;
tail: the index rebuild, the sequences (with the readiness checks) and the audit report, in
      one run: the report is the graph's last asset, so every path ends with it.
Partition keys carry each slice's fingerprint, so a re-planned slice is a new, missing key.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import dagster as dg

from migration_assets.defs.keys import (
    INDEXES_KEY,
    PREFLIGHT_KEY,
    REPORT_KEY,
    SCHEMA_KEY,
    SEQUENCES_KEY,
)
from migration_assets.plan import WHOLE_TABLE_KEY, MigrationPlan, TablePlan

HEAD = (PREFLIGHT_KEY, SCHEMA_KEY)
TAIL = (INDEXES_KEY, SEQUENCES_KEY, REPORT_KEY)


class Status(StrEnum):
    MATERIALIZED = "materialized"
    FAILED = "failed"
    MISSING = "missing"
    IN_PROGRESS = "in progress"


_FROM_DAGSTER = {
    "MATERIALIZED": Status.MATERIALIZED,
    "FAILED": Status.FAILED,
    "IN_PROGRESS": Status.IN_PROGRESS,
}


@dataclass(frozen=True)
class RunSpec:
    """One run of the code location's asset job: what the UI's backfill would launch."""

    label: str  # for people: "supabase_schema", "public.patients 003-1f2e3d4c"
    assets: tuple[dg.AssetKey, ...]
    partition: str | None = None
    table: str = ""  # qualified, for a partition run
    force: bool = False
    weight: int = 0
    checks: frozenset[dg.AssetCheckKey] = frozenset()  # a check-only run (verify)
    members: tuple[RunSpec, ...] = ()  # the one-slice tables a `carry` run materializes

    @property
    def slices(self) -> tuple[RunSpec, ...]:
        """The partition runs this run stands for: its members, or itself."""
        return self.members or (self,)


def partition_statuses(
    instance: dg.DagsterInstance, plan: MigrationPlan
) -> dict[str, dict[str, Status]]:
    """Every table's partitions as Dagster records them: the one checkpoint there is."""
    out: dict[str, dict[str, Status]] = {}
    for table in plan.tables:
        keys = table.partition_keys
        raw = instance.get_status_by_partition(
            dg.AssetKey(table.asset_path), keys, dg.StaticPartitionsDefinition(keys)
        )
        out[table.qualified] = {
            pk: _FROM_DAGSTER.get(str(getattr(s, "value", s)), Status.MISSING)
            for pk, s in (raw or {}).items()
        }
        for pk in keys:
            out[table.qualified].setdefault(pk, Status.MISSING)
    return out


def slice_runs(
    plan: MigrationPlan,
    statuses: dict[str, dict[str, Status]],
    *,
    every: bool = False,
    force: bool = False,
) -> tuple[list[RunSpec], int]:
    """Partition runs due (largest first, for an even finish) and how many are verified."""
    runs: list[RunSpec] = []
    done = 0
    for table in plan.tables:
        for pk, status in statuses[table.qualified].items():
            due = every or force
            if due or status is not Status.MATERIALIZED:
                runs.append(slice_run(table, pk, force=force))
            else:
                done += 1
    runs.sort(key=lambda r: -r.weight)
    return runs, done


def slice_run(table: TablePlan, partition: str, *, force: bool = False) -> RunSpec:
    return RunSpec(
        label=f"{table.qualified} {partition}",
        assets=(dg.AssetKey(table.asset_path),),
        partition=partition,
        table=table.qualified,
        force=force,
        weight=max(1, table.rows_per_slice),
    )


CARRY_ROWS = 100_000  # rows (estimated) one run carries, about: what a crash may lose
CARRY_TABLES = 50  # steps a run carries at most: its page in the UI stays readable


def carry(runs: list[RunSpec], *, lanes: int = 1) -> list[RunSpec]:
    """Whole-table slices of small tables, several to a run; other runs as they were.

    A run costs about 0.4 s of Dagster bookkeeping, a small table's copy a few milliseconds.
    Every table's only slice has the same partition key, so one run of the asset job can
    materialize several such tables, each recording its own partition status and checks,
    as a UI backfill of that key would. A run carries about CARRY_ROWS rows (each table goes
    to the lightest run, so one may hold a table more): that much, a second or two of
    copying, is what a crash mid-run may have to redo. There is a run for each of `lanes`
    (runs at once) where there are tables enough, so a small database copies in parallel.
    """
    small: list[RunSpec] = []
    rest: list[RunSpec] = []
    for run in runs:
        packable = run.partition == WHOLE_TABLE_KEY and not run.force and run.weight < CARRY_ROWS
        (small if packable else rest).append(run)
    if len(small) < 2:
        return runs
    count = max(
        -(-_rows(small) // CARRY_ROWS), -(-len(small) // CARRY_TABLES), min(lanes, len(small))
    )
    batches: list[list[RunSpec]] = [[] for _ in range(count)]
    loads = [(0, 0)] * count  # (rows, tables) of each batch so far
    for run in small:  # largest first, as given: each to the lightest run so far
        i = min(range(count), key=loads.__getitem__)
        batches[i].append(run)
        loads[i] = (loads[i][0] + run.weight, loads[i][1] + 1)
    return sorted(rest + [_carrier(b) for b in batches], key=lambda r: -r.weight)


def _rows(batch: list[RunSpec]) -> int:
    return sum(r.weight for r in batch)


def _carrier(batch: list[RunSpec]) -> RunSpec:
    if len(batch) == 1:
        return batch[0]
    return RunSpec(
        label=f"{len(batch)} small tables {WHOLE_TABLE_KEY}",
        assets=tuple(a for r in batch for a in r.assets),
        partition=WHOLE_TABLE_KEY,
        weight=_rows(batch),
        members=tuple(batch),
    )


def head_run() -> RunSpec:
    return RunSpec(label="preflight and schema", assets=HEAD)


def tail_run() -> RunSpec:
    return RunSpec(label="indexes, sequences and audit report", assets=TAIL)
