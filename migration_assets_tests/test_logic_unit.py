"""Slices, plan sizing, names and error masking: pure functions."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import dagster as dg
import pytest

from migration_assets.db.errors import VALUE_MASK, MigrationError, mask_values
from migration_assets.db.schema import idempotent_schemas, tool_error, with_extensions
from migration_assets.db.session import MIN_SERVER_VERSION, refuse_old_server
from migration_assets.db.slices import SliceSpec, Strategy, range_cast_type, slice_predicate
from migration_assets.defs.checks import (
    PARTITION_RANGE_END_TAG,
    PARTITION_RANGE_START_TAG,
    PARTITION_TAG,
    copies_part_only,
    differing_slices,
)
from migration_assets.defs.compat import remember_storage_schema
from migration_assets.defs.keys import TABLE_CHECKSUM
from migration_assets.engine.driver import TAG_DRIVER, has_exited, this_process
from migration_assets.engine.migrate import _may_be_between_runs
from migration_assets.engine.session import Session
from migration_assets.engine.work import CARRY_ROWS, RunSpec, Status, carry, slice_runs
from migration_assets.plan import (
    DEFAULT_MIN_PARTITIONS,
    DEFAULT_ROWS_PER_PARTITION,
    WHOLE_TABLE_KEY,
    dagster_name,
    load_plan,
)
from migration_assets.planner import partitions_for

pytestmark = pytest.mark.unit


def _spec(
    strategy: Strategy, index: int, bounds: tuple[str, ...] = (), parts: int = 4
) -> SliceSpec:
    return SliceSpec("public", "t", strategy, ("id",), "bigint", bounds, parts, index)


def test_range_slices_are_open_at_both_ends() -> None:
    bounds = ("10", "20", "30")
    first = slice_predicate(_spec(Strategy.RANGE, 0, bounds)).as_string()
    middle = slice_predicate(_spec(Strategy.RANGE, 1, bounds)).as_string()
    last = slice_predicate(_spec(Strategy.RANGE, 3, bounds)).as_string()
    assert first == "\"id\" < '10'::bigint"
    assert middle == "\"id\" >= '10'::bigint AND \"id\" < '20'::bigint"
    assert last == "\"id\" >= '30'::bigint"


def test_hash_and_single_slices() -> None:
    hashed = slice_predicate(_spec(Strategy.HASH, 2)).as_string()
    assert 'md5("id"::text)' in hashed
    assert hashed.endswith("= 2")
    assert slice_predicate(_spec(Strategy.SINGLE, 0, parts=1)).as_string() == "TRUE"


def test_fingerprint_changes_with_the_rows_a_slice_means() -> None:
    a = _spec(Strategy.RANGE, 1, ("10", "20", "30"))
    b = _spec(Strategy.RANGE, 1, ("10", "25", "30"))
    assert a.fingerprint != b.fingerprint
    assert a.fingerprint == _spec(Strategy.RANGE, 1, ("10", "20", "30")).fingerprint


@pytest.mark.parametrize(
    ("type_", "cast"),
    [
        ("bigint", "bigint"),
        ("uuid", "uuid"),
        ("numeric(12,2)", "numeric"),
        ("text", None),
        ("character varying(20)", None),
        ("timestamp with time zone", "timestamp with time zone"),
    ],
)
def test_only_collation_free_types_get_range_slices(type_: str, cast: str | None) -> None:
    assert range_cast_type(type_) == cast


@pytest.mark.parametrize(
    ("rows", "expected"), [(0, 1), (199_999, 1), (200_000, 2), (1_000_000, 4), (2_600_000, 11)]
)
def test_partition_sizing(rows: int, expected: int) -> None:
    """Fewer, larger slices: a run costs ~0.4 s of Dagster bookkeeping, a table under 200k
    rows copies in a few seconds, and a crash loses at most the slices in flight."""
    assert partitions_for(rows, DEFAULT_ROWS_PER_PARTITION, DEFAULT_MIN_PARTITIONS) == expected


def test_dagster_names_are_valid_stable_and_distinct() -> None:
    assert dagster_name("patients") == "patients"
    odd = dagster_name("Odd Table")
    assert odd.startswith("Odd_Table_")
    assert odd == dagster_name("Odd Table")
    assert dagster_name("Odd_Table") != odd
    assert dagster_name("Ärzte").isascii()


@pytest.mark.parametrize(
    ("raw", "leak"),
    [
        (
            'duplicate key value violates unique constraint "patients_mrn_key" '
            "Key (mrn)=(MRN-0042) already exists.",
            "MRN-0042",
        ),
        ('invalid input syntax for type uuid: "Zoë Müller"', "Zoë Müller"),
        ("invalid input syntax for type integer: abc123", "abc123"),
        ("date too small (before year 1): '-infinity'", "-infinity"),
        ('invalid byte sequence for encoding "UTF8": 0xc3 0x28', "0xc3 0x28"),
        (
            'character with byte sequence 0xe2 0x80 0x9c in encoding "UTF8" has no '
            'equivalent in encoding "LATIN1"',
            "0x9c",
        ),
    ],
)
def test_row_values_are_masked_in_error_text(raw: str, leak: str) -> None:
    masked = mask_values(raw)
    assert leak not in masked
    assert VALUE_MASK in masked


def test_the_final_delta_reads_back_the_slices_a_checksum_check_named() -> None:
    """The cutover resyncs exactly the partitions the failed table_checksum listed."""
    key = dg.AssetKey(["public", "patients"])

    def evaluation(passed: bool, listed: str) -> dg.AssetCheckEvaluation:
        meta = {"differing_slices": dg.MetadataValue.text(listed)}
        return dg.AssetCheckEvaluation(
            asset_key=key, check_name=TABLE_CHECKSUM, passed=passed, metadata=meta
        )

    assert differing_slices(evaluation(False, "001-aa, 003-bb")) == ["001-aa", "003-bb"]
    assert differing_slices(evaluation(False, "none")) == []
    assert differing_slices(evaluation(True, "001-aa")) == []


def test_only_partitions_not_materialized_are_due() -> None:
    plan = load_plan(Path(__file__).parents[1] / "migration_assets" / "plans" / "demo.json")
    statuses = {
        t.qualified: dict.fromkeys(t.partition_keys, Status.MATERIALIZED) for t in plan.tables
    }
    assert slice_runs(plan, statuses) == ([], plan.total_partitions())
    table = max(plan.tables, key=lambda t: len(t.partition_keys))
    chosen = table.partition_keys[-1]
    statuses[table.qualified][chosen] = Status.FAILED
    runs, done = slice_runs(plan, statuses)
    assert [(r.table, r.partition) for r in runs] == [(table.qualified, chosen)]
    assert done == plan.total_partitions() - 1
    runs, done = slice_runs(plan, statuses, every=True)
    assert (len(runs), done) == (plan.total_partitions(), 0)


def test_every_one_slice_table_shares_one_partition_key() -> None:
    """Whatever its strategy or key, a table's only slice means every row."""
    single = _spec(Strategy.SINGLE, 0, parts=1)
    one_range = _spec(Strategy.RANGE, 0, parts=1)
    assert single.fingerprint == one_range.fingerprint
    assert _spec(Strategy.HASH, 0, parts=2).fingerprint != single.fingerprint
    plan = load_plan(Path(__file__).parents[1] / "migration_assets" / "plans" / "demo.json")
    whole = [t for t in plan.tables if t.slicing.partitions == 1]
    assert len(whole) >= 2
    assert {t.partition_keys[0] for t in whole} == {WHOLE_TABLE_KEY}


def _slice_run(name: str, rows: int, partition: str = WHOLE_TABLE_KEY) -> RunSpec:
    return RunSpec(
        label=f"public.{name} {partition}",
        assets=(dg.AssetKey(["public", name]),),
        partition=partition,
        table=f"public.{name}",
        weight=rows,
    )


def test_small_tables_travel_several_to_a_run_and_each_reports_its_own_slice() -> None:
    small = [_slice_run(f"t{i}", 100 + i) for i in range(14)]
    big = _slice_run("big", 150_000)  # one slice, yet alone it fills a run
    split = _slice_run("split", 250_000, partition="001-0badcafe")
    runs = carry([split, big, *small])
    assert [r.label for r in runs] == [split.label, big.label, f"14 small tables {WHOLE_TABLE_KEY}"]
    carried = runs[-1]
    assert [s.label for s in carried.slices] == [s.label for s in small]
    assert carried.partition == WHOLE_TABLE_KEY
    assert carried.assets == tuple(s.assets[0] for s in small)
    assert carried.weight == sum(s.weight for s in small)
    assert split.slices == (split,)


def test_small_tables_spread_over_the_runs_that_go_at_once() -> None:
    small = [_slice_run(f"t{i}", 100 + i) for i in range(14)]
    runs = carry(small, lanes=2)
    assert sorted(len(r.slices) for r in runs) == [7, 7]
    assert sorted(s.label for r in runs for s in r.slices) == sorted(s.label for s in small)
    assert carry(small[:1], lanes=2) == small[:1]


def test_a_run_carries_at_most_its_share_of_rows() -> None:
    tables = [_slice_run(f"t{i}", CARRY_ROWS // 3) for i in range(7)]
    runs = carry(tables)
    assert sorted(len(r.slices) for r in runs) == [2, 2, 3]
    assert all(r.weight <= CARRY_ROWS for r in runs)
    assert sum(r.weight for r in runs) == sum(t.weight for t in tables)
    forced = [replace(t, force=True) for t in tables]
    assert carry(forced) == forced  # a forced re-copy takes run config: one table a run


def test_a_second_look_for_other_migrations_only_after_recent_runs_of_a_live_driver() -> None:
    """The pause between two runs of another migration is short: only a run that started or
    ended just now makes an empty first look worth repeating, and only if the process that
    drove it may still launch the next (a migrate that has exited launches nothing)."""

    @dg.op
    def noop() -> None:
        pass

    @dg.job
    def one_run() -> None:
        noop()

    exited = subprocess.run(
        [
            sys.executable,
            "-c",
            "from migration_assets.engine.driver import this_process as p;print(p())",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    with dg.DagsterInstance.ephemeral() as instance:
        session = cast(Session, SimpleNamespace(instance=instance))
        assert not _may_be_between_runs(session, 5.0)  # nothing ever ran
        assert one_run.execute_in_process(instance=instance, tags={TAG_DRIVER: exited}).success
        assert not _may_be_between_runs(session, 5.0)  # its driver has exited
        assert one_run.execute_in_process(instance=instance).success  # the UI's: no driver
        assert _may_be_between_runs(session, 5.0)
        assert not _may_be_between_runs(session, 0.0)

    with dg.DagsterInstance.ephemeral() as instance:
        session = cast(Session, SimpleNamespace(instance=instance))
        assert one_run.execute_in_process(instance=instance, tags={TAG_DRIVER: this_process()})
        assert _may_be_between_runs(session, 5.0)  # this process lives: it may run again


def test_a_driver_has_exited_only_when_this_host_can_tell() -> None:
    me = this_process()
    host, pid, started = me.rsplit("/", 2)
    assert pid == str(os.getpid())
    assert started.isdigit()
    assert not has_exited(me)
    assert has_exited(f"{host}/{pid}/{int(started) + 1}")  # the pid now belongs to another
    assert not has_exited(f"another-{host}/{pid}/{int(started) + 1}")  # cannot tell: alive
    for unknown in (None, "", "no/pid/x", f"{host}/{pid}/"):
        assert not has_exited(unknown)


def test_the_storage_s_yes_is_remembered_and_its_no_asked_again() -> None:
    """A table that exists stays; one that is missing may be created by an upgrade."""
    asked: list[str] = []
    tables = {"event_logs"}

    def has_table(name: str) -> bool:
        asked.append(name)
        return name in tables

    storage = SimpleNamespace(has_table=has_table, has_asset_key_col=lambda column: True)
    instance = SimpleNamespace(event_log_storage=storage, run_storage=SimpleNamespace())
    remember_storage_schema(cast(dg.DagsterInstance, instance))
    for _ in range(3):
        assert storage.has_table("event_logs")
        assert not storage.has_table("pending_steps")
    assert storage.has_table(name="event_logs")  # asked by keyword: a question of its own
    tables.add("pending_steps")
    assert storage.has_table("pending_steps")
    assert storage.has_table("pending_steps")
    assert asked == ["event_logs"] + ["pending_steps"] * 3 + ["event_logs", "pending_steps"]


def test_a_failed_psql_is_reported_by_its_error_line_not_its_caret() -> None:
    stderr = (
        'psql:/tmp/x.sql:45: ERROR:  type "public.citext" does not exist\n'
        "LINE 2:     email public.citext NOT NULL,\n"
        "                  ^\n"
    )
    assert tool_error(stderr) == 'psql:/tmp/x.sql:45: ERROR:  type "public.citext" does not exist'
    assert tool_error("pg_dump: error: connection failed\n") == "pg_dump: error: connection failed"
    assert tool_error("something odd\nlast words\n") == "last words"
    assert tool_error("") == ""


def test_the_source_s_extensions_are_created_before_the_dump_needs_them() -> None:
    dump = (
        'SET x = 1;\nCREATE SCHEMA public;\nCREATE SCHEMA clinic;\nCREATE SCHEMA "select";\n'
        "CREATE TABLE clinic.t ();"
    )
    out = with_extensions(
        idempotent_schemas(dump),
        [("citext", "public"), ("ltree", "clinic"), ("hstore", "My Ext"), ("cube", "select")],
    )

    def tried(name: str, sql: str) -> str:
        return (
            f"DO $tried$ BEGIN {sql} EXCEPTION WHEN OTHERS THEN RAISE WARNING 'extension % was "
            f"not created on the target: %', '{name}', SQLERRM; END $tried$;"
        )

    assert out.splitlines() == [
        tried(
            "hstore",
            'CREATE SCHEMA IF NOT EXISTS "My Ext"; '
            'CREATE EXTENSION IF NOT EXISTS "hstore" WITH SCHEMA "My Ext" CASCADE;',
        ),
        "SET x = 1;",
        # every Supabase project and new database has `public` already (pg_dump -n public
        # creates it anyway): the dump's schemas are created only where they are missing
        "CREATE SCHEMA IF NOT EXISTS public;",
        tried("citext", 'CREATE EXTENSION IF NOT EXISTS "citext" WITH SCHEMA "public" CASCADE;'),
        "CREATE SCHEMA IF NOT EXISTS clinic;",  # the extension follows its schema
        tried("ltree", 'CREATE EXTENSION IF NOT EXISTS "ltree" WITH SCHEMA "clinic" CASCADE;'),
        'CREATE SCHEMA IF NOT EXISTS "select";',  # a keyword, quoted by pg_dump
        tried("cube", 'CREATE EXTENSION IF NOT EXISTS "cube" WITH SCHEMA "select" CASCADE;'),
        "CREATE TABLE clinic.t ();",
    ]
    assert with_extensions(dump, []) == dump


def test_a_source_older_than_the_catalog_this_tool_reads_is_refused_by_version() -> None:
    refuse_old_server(MIN_SERVER_VERSION)  # 12.0: fine
    with pytest.raises(MigrationError, match="PostgreSQL 11: this tool reads PostgreSQL 12"):
        refuse_old_server(110022)
    with pytest.raises(MigrationError, match=r"PostgreSQL 9\.6: "):
        refuse_old_server(90624)


def test_whole_table_checks_judge_a_run_only_when_it_copies_every_slice() -> None:
    """A one-slice table copied in the run, or a range over all slices: the checks are due;
    one slice of several: they would judge a half-copied table; no partition tag (the
    Checks tab, verify): due."""
    one = [WHOLE_TABLE_KEY]
    three = ["000-aaaaaaaa", "001-bbbbbbbb", "002-cccccccc"]
    assert not copies_part_only({PARTITION_TAG: WHOLE_TABLE_KEY}, one)
    assert copies_part_only({PARTITION_TAG: three[1]}, three)
    assert copies_part_only({PARTITION_TAG: WHOLE_TABLE_KEY}, three)
    whole = {PARTITION_RANGE_START_TAG: three[0], PARTITION_RANGE_END_TAG: three[-1]}
    assert not copies_part_only(whole, three)
    assert copies_part_only({**whole, PARTITION_RANGE_END_TAG: three[1]}, three)
    assert not copies_part_only({}, three)
