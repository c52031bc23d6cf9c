"""Issues 6 and 13: `migration-assets migrate` against what people would use instead.

One throwaway stack, one seeded source, and in the same run on the same servers the median of
`--repeats` repeats of: `pg_dump --data-only | psql` (baseline A, how Supabase's guide restores
data), one binary COPY stream per table (baseline B, the practical limit), `migrate` cold,
`verify` alone, and the nothing-to-do re-run, plus the peak RSS of migrate's process tree;
then the same cold migrate against `pg_dump --data-only | psql` on a small database of 14
tables and 3,400 rows in a schema of its own, where fixed and per-run costs dominate.
Absolute seconds depend on the machine; the ratios to baseline A are what we compare. Each
step also reports CPU seconds (client and servers), which stay steady when other work on a
shared machine stretches wall times, and where migrate's time went, from Dagster's records.

Every repeat starts from an empty target database with the schema already applied, so no
step pays for DDL, and every copy is checked afterwards (target row counts equal the
source's per table) so a fast wrong answer cannot win. Passwords never reach a command line
or the output: child processes get them through the environment, URLs shown are masked.

    .venv/bin/python benchmarks/run.py [--rows 1000000] [--repeats 3] [--workers 2]
    .venv/bin/python benchmarks/run.py --rss-scales 1000000,3000000
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import itertools
import json
import os
import platform
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import IsolationLevel, sql
from psycopg.copy import QueuedLibpqWriter

from migration_assets.db.dsn import mask_dsn, parse_dsn
from migration_assets.db.schema import alembic_upgrade
from migration_assets.devstack.binaries import pg_bin_dir
from migration_assets.devstack.seed import plan_sizes, seed
from migration_assets.devstack.stack import DevStack
from migration_assets.plan import MigrationPlan, TablePlan, load_plan

REPO_ROOT = Path(__file__).resolve().parents[1]
ALEMBIC_INI = REPO_ROOT / "alembic.ini"
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
DEFAULT_ROWS = 1_000_000
# seed.py's fan-out, measured: ~13.32 rows per patient besides the 53 reference rows and the
# providers (plan_sizes: 20 to 400), which do not follow the patient count.
ROWS_PER_PATIENT = 13.32
REFERENCE_ROWS = 53
RSS_POLL_SECONDS = 0.1  # one /proc scan costs ~1.5 ms: ~1.5% of one core at this rate
STEP_TIMEOUT_SECONDS = 3 * 3600
COPY_BUFFER_BYTES = 256 * 1024
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
MB = 1024 * 1024
# Settings the CLI reads: a developer's own values must not leak into a measured run.
SETTING_PREFIXES = ("SOURCE_DATABASE_", "SUPABASE_", "MIGRATION_", "DAGSTER_")

STEPS: dict[str, str] = {
    "baseline_a": "baseline A: pg_dump --data-only | psql (replica)",
    "baseline_b": "baseline B: binary COPY stream per table",
    "migrate": "migrate (cold, verified)",
    "verify": "verify alone",
    "rerun": "migrate re-run (nothing to do)",
}
# Issue 13's targets: (description, test on (seconds, ratio to A)); migrate's tightens at 5M.
TARGETS: dict[str, tuple[str, Callable[[float, float], bool]]] = {
    "migrate": ("<= 1.0x A", lambda s, r: r <= 1.0),
    "verify": ("<= 0.3x A", lambda s, r: r <= 0.3),
    "rerun": ("<= 3 s", lambda s, r: s <= 3.0),
}
MIGRATE_TARGET_AT_5M: tuple[str, Callable[[float, float], bool]] = (
    "<= 0.8x A",
    lambda s, r: r <= 0.8,
)
ABOUT_5M = 4_500_000  # --rows 5000000 seeds a few rows less
RSS_TARGET_MB = 400
SMALL_SCHEMA, SMALL_TABLES, SMALL_ROWS, SMALL_TARGET_SECONDS = "ledger", 14, 3_400, 3.0


class BenchmarkError(RuntimeError):
    """A step failed or copied the wrong rows: the numbers of this run mean nothing."""


# ------------------------------------------------------------------ process measurement


@dataclass(frozen=True)
class ProcessRun:
    """One child process: wall time, exit code, output, and its memory."""

    seconds: float
    returncode: int
    output: str
    peak_tree_rss: int  # bytes: max over samples of the summed RSS of the process tree
    tree_pss_at_peak: int  # bytes: the tree's summed PSS at that moment
    processes_at_peak: list[tuple[str, int]]  # (role, RSS bytes) of each process then
    max_process_rss: int  # bytes: the kernel's exact peak of the largest single process
    started_at: float  # epoch seconds, to line up with Dagster's run records
    ended_at: float


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, resident pages), from /proc/*/stat (no psutil in the venv)."""
    table: dict[int, tuple[int, int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except OSError:  # exited while we looked
            continue
        table[int(entry)] = (int(fields[1]), int(fields[21]))
    return table


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_ticks(pid: int, *, with_reaped: bool) -> int:
    """utime + stime of a process (and of its reaped children when asked), in clock ticks."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            fields = fh.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0
    ticks = int(fields[11]) + int(fields[12])
    return ticks + (int(fields[13]) + int(fields[14]) if with_reaped else 0)


def server_cpu(stack: DevStack) -> float:
    """CPU seconds the stack's servers have used so far: each postmaster, its live processes
    (backends, checkpointer, autovacuum) and the ones it has reaped (closed connections).

    Wall time on a shared 2-core machine swells with whatever else runs; CPU seconds on both
    sides of the wire barely do, so they are the steadier measure of a step's cost.
    """
    table = _proc_table()
    ticks = 0
    for server in (stack.source, stack.target, stack.dagster):
        if server is None:
            continue
        postmaster = int((server.data_dir / "postmaster.pid").read_text().split()[0])
        ticks += _cpu_ticks(postmaster, with_reaped=True)
        ticks += sum(
            _cpu_ticks(pid, with_reaped=False)
            for pid, (ppid, _) in table.items()
            if ppid == postmaster
        )
    return ticks / CLOCK_TICKS


def client_cpu() -> float:
    """CPU seconds of this process and every child it has reaped (pg_dump, psql, the CLI
    and, through the CLI's own joins, its workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + reaped.ru_utime + reaped.ru_stime


@dataclass
class Cost:
    seconds: float = 0.0
    cpu: float = 0.0  # client and servers together


@contextmanager
def clocked(stack: DevStack) -> Iterator[Cost]:
    """Wall seconds and CPU seconds (client + servers) of the block."""
    cost = Cost()
    cpu0, servers0 = client_cpu(), server_cpu(stack)
    started = time.perf_counter()
    yield cost
    cost.seconds = time.perf_counter() - started
    cost.cpu = client_cpu() - cpu0 + server_cpu(stack) - servers0


def tree_rss(root: int) -> dict[int, int]:
    """RSS in bytes of `root` and each of its descendants (workers, resource tracker).

    A sum of RSS counts pages shared between processes once per process, so it errs high:
    a number under the target is safely under it.
    """
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    rss: dict[int, int] = {}
    stack = [root]
    while stack:
        pid = stack.pop()
        if pid in table:
            rss[pid] = table[pid][1] * PAGE_SIZE
        stack.extend(children.get(pid, []))
    return rss


def role(pid: int, root: int) -> str:
    """What a process of the migrate tree is, for the memory breakdown."""
    if pid == root:
        return "migrate (main)"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read()
    except OSError:
        return "exited"
    if b"resource_tracker" in cmdline:
        return "resource tracker"
    if b"multiprocessing" in cmdline:
        return "worker"
    return Path(cmdline.split(b"\0")[0].decode(errors="replace")).name


def pss(pids: Sequence[int]) -> int:
    """Summed proportional set size in bytes: shared pages split between their users."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as fh:
                for line in fh:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
    return total


class _MemorySampler(threading.Thread):
    """Samples the tree in the background so the main thread can block in wait4 and stop
    the clock the moment the child exits; kills the child (by pid) past its deadline.

    PSS costs ~1.5 ms per process to read, so it is read only when the RSS sum reaches a
    new peak: it is the PSS at the RSS peak, not a separately tracked maximum.
    """

    def __init__(self, pid: int, timeout: float) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.deadline = time.monotonic() + timeout
        self.peak_rss = 0
        self.pss_at_peak = 0
        self.processes_at_peak: list[tuple[str, int]] = []  # (role, RSS bytes)
        self.timed_out = False
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(RSS_POLL_SECONDS):
            rss = tree_rss(self.pid)
            if sum(rss.values()) > self.peak_rss:
                self.peak_rss, self.pss_at_peak = sum(rss.values()), pss(list(rss))
                self.processes_at_peak = [(role(p, self.pid), b) for p, b in rss.items()]
            if time.monotonic() > self.deadline:
                self.timed_out = True
                os.kill(self.pid, signal.SIGKILL)
                return


def run_measured(argv: Sequence[str], *, env: dict[str, str], cwd: Path, log: Path) -> ProcessRun:
    """Run a child to completion; wall time, exit code, output and peak memory."""
    with log.open("w") as out:
        started, wall = time.perf_counter(), time.time()
        proc = subprocess.Popen(list(argv), env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
        sampler = _MemorySampler(proc.pid, STEP_TIMEOUT_SECONDS)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
        sampler.done.set()
        sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4, not by Popen
    if sampler.timed_out:
        raise BenchmarkError(f"{argv[1]} took longer than {STEP_TIMEOUT_SECONDS} s; killed")
    return ProcessRun(
        seconds=seconds,
        returncode=proc.returncode,
        output=log.read_text(errors="replace"),
        peak_tree_rss=sampler.peak_rss,
        tree_pss_at_peak=sampler.pss_at_peak,
        processes_at_peak=sampler.processes_at_peak,
        max_process_rss=usage.ru_maxrss * 1024,  # Linux reports KiB
        started_at=wall,
        ended_at=wall + seconds,
    )


# ------------------------------------------------------------------ the bench


@dataclass
class Bench:
    """Everything one benchmark run shares: the stack, the seeded source, the plan."""

    stack: DevStack
    work: Path
    workers: int
    dagster_storage: str
    source_url: str = ""
    plan_path: Path = Path()
    plan: MigrationPlan | None = None
    source_counts: dict[str, int] = field(default_factory=dict)
    serial: Iterator[int] = field(default_factory=itertools.count)
    ddl: str = ""  # the schema a target gets (MIGRATION_SCHEMA_MODE=existing); "": Alembic

    @property
    def tables(self) -> list[TablePlan]:
        assert self.plan is not None, "no plan yet"
        return self.plan.tables

    @property
    def total_rows(self) -> int:
        return sum(self.source_counts.values())

    def name(self, prefix: str) -> str:
        return f"bench_{prefix}_{next(self.serial)}"


def patients_for(rows: int) -> int:
    """The seed's patient count that yields about `rows` rows across the clinic tables."""
    patients = max(1, round(rows / ROWS_PER_PATIENT))
    for _ in range(3):  # the provider count depends on the patient count: settle it
        fixed = REFERENCE_ROWS + plan_sizes(patients)["providers"]
        patients = max(1, round((rows - fixed) / ROWS_PER_PATIENT))
    return patients


def prepare_source(bench: Bench, name: str, rows: int) -> None:
    """A source database at Alembic head, seeded, frozen and analysed, and its plan.

    VACUUM FREEZE sets the hint bits a first scan would otherwise write, so the first step
    of the first repeat does not pay for them.
    """
    assert bench.stack.source is not None
    url = bench.stack.create_source_database(name)
    alembic_upgrade(url, sslrootcert=None, config_path=ALEMBIC_INI)
    started = time.perf_counter()
    with psycopg.connect(url) as conn:
        seed(conn, patients=patients_for(rows), seed=42)
        conn.commit()
    bench.stack.source.admin("VACUUM (FREEZE, ANALYZE)", dbname=name)
    _say(f"seeded {patients_for(rows):,} patients in {time.perf_counter() - started:.1f} s")
    bench.source_url = url
    bench.plan_path = bench.work / f"plan-{name}.json"
    _cli_checked(bench, ["plan", "--out", str(bench.plan_path)], cli_env(bench, "", None))
    bench.plan = load_plan(bench.plan_path)
    bench.source_counts = table_counts(url, bench.tables)
    _say(
        f"source {mask_dsn(url)}: {bench.total_rows:,} rows in {len(bench.tables)} tables, "
        f"{bench.plan.total_partitions()} partitions planned"
    )


def table_counts(url: str, tables: Sequence[TablePlan]) -> dict[str, int]:
    """Exact count(*) per table: the check that every copy moved every row."""
    counts: dict[str, int] = {}
    with psycopg.connect(url) as conn:
        for t in tables:
            query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t.schema_name, t.name))
            row = conn.execute(query).fetchone()
            counts[t.qualified] = int(row[0]) if row else -1
    return counts


def check_counts(bench: Bench, target_url: str, step: str) -> None:
    """Fail loudly when the target does not hold exactly the source's rows."""
    got = table_counts(target_url, bench.tables)
    wrong = {t: (n, got.get(t)) for t, n in bench.source_counts.items() if got.get(t) != n}
    if wrong:
        detail = ", ".join(f"{t}: source {s:,}, target {g}" for t, (s, g) in wrong.items())
        raise BenchmarkError(f"{step}: target row counts differ from the source: {detail}")


@contextmanager
def fresh_target(bench: Bench) -> Iterator[str]:
    """An empty Supabase-like database with the schema applied; dropped afterwards."""
    assert bench.stack.target is not None
    name = bench.name("target")
    url = bench.stack.create_target_database(name)
    try:
        if bench.ddl:  # as the migration role, which then owns what it writes
            with psycopg.connect(url, sslrootcert=str(bench.stack.ca_file)) as conn:
                conn.execute(bench.ddl)
        else:
            alembic_upgrade(url, sslrootcert=str(bench.stack.ca_file), config_path=ALEMBIC_INI)
        yield url
    finally:
        bench.stack.target.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def fresh_dagster_home(bench: Bench) -> Iterator[Path]:
    """A DAGSTER_HOME whose storage is initialised before the clock starts.

    `postgres` (default): a fresh database on the stack's Dagster server, the storage the
    design prescribes for audit history. `sqlite`: Dagster's default in an empty directory.
    Creating Dagster's own tables is one-time setup like the schema step, so it is excluded.
    """
    assert bench.stack.dagster is not None
    name = bench.name("dagster")
    home = bench.work / name
    if bench.dagster_storage == "postgres":
        bench.stack.dagster_home_for(home, name)
    else:
        home.mkdir(mode=0o700)
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    _init_dagster_storage(home)
    try:
        yield home
    finally:
        if bench.dagster_storage == "postgres":
            bench.stack.dagster.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _init_dagster_storage(home: Path) -> None:
    from dagster import DagsterInstance

    DagsterInstance.from_config(str(home)).dispose()


# ------------------------------------------------------------------ baselines


def _conninfo_and_password(url: str) -> tuple[str, str]:
    """libpq conninfo without the password (safe on a command line), and the password."""
    params = parse_dsn(url)
    password = params.pop("password", "")
    return psycopg.conninfo.make_conninfo("", **params), password


def _pattern(table: TablePlan) -> str:
    """A pg_dump --table pattern naming exactly this table, whatever its characters."""
    return ".".join('"' + p.replace('"', '""') + '"' for p in (table.schema_name, table.name))


def _pg_env(password: str) -> dict[str, str]:
    return {**os.environ, "PGPASSWORD": password, "PGAPPNAME": "benchmark"}


def baseline_pg_dump(bench: Bench, target_url: str) -> None:
    """`pg_dump --data-only | psql` as Supabase's restore guide does it."""
    bin_dir = pg_bin_dir()
    src, src_password = _conninfo_and_password(bench.source_url)
    tgt, tgt_password = _conninfo_and_password(target_url)
    dump = [str(bin_dir / "pg_dump"), "--data-only", "--no-sync", f"--dbname={src}"]
    dump += [f"--table={_pattern(t)}" for t in bench.tables]
    restore = [str(bin_dir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction"]
    restore += ["-c", "SET session_replication_role = replica", "-f", "-", f"--dbname={tgt}"]
    dump_log, restore_log = bench.work / "pg_dump.err", bench.work / "psql.err"
    with dump_log.open("wb") as dump_err, restore_log.open("wb") as restore_err:
        producer = subprocess.Popen(
            dump, env=_pg_env(src_password), stdout=subprocess.PIPE, stderr=dump_err
        )
        consumer = subprocess.run(
            restore,
            env=_pg_env(tgt_password),
            stdin=producer.stdout,
            stderr=restore_err,
            stdout=subprocess.DEVNULL,
            check=False,
        )
        if producer.stdout is not None:
            producer.stdout.close()
        producer.wait()
    if producer.returncode or consumer.returncode:
        raise BenchmarkError(
            f"pg_dump exit {producer.returncode}, psql exit {consumer.returncode}: "
            f"{dump_log.read_text(errors='replace')[-400:]} "
            f"{restore_log.read_text(errors='replace')[-400:]}"
        )


def baseline_copy(bench: Bench, target_url: str) -> None:
    """One COPY stream per table, source snapshot to one target transaction.

    Binary (text only for a table the plan marks unsafe for binary), generated columns left
    to the target, `session_replication_role = replica` like every other path measured.
    """
    with psycopg.connect(bench.source_url) as src, psycopg.connect(target_url) as tgt:
        src.isolation_level = IsolationLevel.REPEATABLE_READ
        src.read_only = True
        with src.transaction(), tgt.transaction():
            tgt.execute("SET LOCAL session_replication_role = replica")
            for table in bench.tables:
                _copy_table(src, tgt, table)


def _copy_table(
    src: psycopg.Connection[Any], tgt: psycopg.Connection[Any], table: TablePlan
) -> None:
    fmt = sql.SQL("(FORMAT binary)" if table.binary_safe else "(FORMAT text)")
    relation = sql.Identifier(table.schema_name, table.name)
    columns = sql.SQL(", ").join(map(sql.Identifier, table.copy_columns))
    copy_out = sql.SQL("COPY (SELECT {} FROM {}) TO STDOUT {}").format(columns, relation, fmt)
    copy_in = sql.SQL("COPY {} ({}) FROM STDIN {}").format(relation, columns, fmt)
    with (
        src.cursor() as scur,
        tgt.cursor() as tcur,
        scur.copy(copy_out) as out,
        tcur.copy(copy_in, writer=QueuedLibpqWriter(tcur)) as sink,
    ):
        # libpq hands COPY out one row at a time: batch rows so Python does not pay per row,
        # and let QueuedLibpqWriter's thread write to the target while we read the source.
        buffer = bytearray()
        for chunk in out:
            buffer += chunk
            if len(buffer) >= COPY_BUFFER_BYTES:
                sink.write(bytes(buffer))
                buffer.clear()
        if buffer:
            sink.write(bytes(buffer))


# ------------------------------------------------------------------ the CLI


def _cli() -> list[str]:
    """This venv's `migration-assets` (the one a user of this checkout runs)."""
    script = Path(sys.executable).parent / "migration-assets"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "migration_assets.cli"]


def cli_env(bench: Bench, target_url: str, dagster_home: Path | None) -> dict[str, str]:
    """The settings a user would export, and nothing of the caller's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(SETTING_PREFIXES)}
    env.update(
        SOURCE_DATABASE_URL=bench.source_url,
        SUPABASE_SSLROOTCERT=str(bench.stack.ca_file),
        MIGRATION_PLAN=str(bench.plan_path),
        MIGRATION_ALEMBIC_CONFIG=str(ALEMBIC_INI),
        DAGSTER_PG_PASSWORD=bench.stack.passwords["dagster"],
        DAGSTER_DISABLE_TELEMETRY="1",
        COLUMNS="160",
    )
    if bench.ddl:
        env["MIGRATION_SCHEMA_MODE"] = "existing"
    if target_url:
        env["SUPABASE_DB_URL"] = target_url
    if dagster_home is not None:
        env["DAGSTER_HOME"] = str(dagster_home)
    return env


def run_cli(bench: Bench, args: list[str], env: dict[str, str]) -> ProcessRun:
    log = bench.work / f"{bench.name(args[0])}.log"
    return run_measured([*_cli(), *args], env=env, cwd=bench.work, log=log)


def _cli_checked(bench: Bench, args: list[str], env: dict[str, str]) -> ProcessRun:
    run = run_cli(bench, args, env)
    if run.returncode != 0:
        tail = "\n".join(run.output.splitlines()[-25:])  # the CLI masks what it prints
        raise BenchmarkError(f"migration-assets {args[0]} exited {run.returncode}:\n{tail}")
    return run


_COPIED = re.compile(r"migrate: (\d+) partition\(s\) copied.*? in ([\d.]+)s")


def copied_partitions(run: ProcessRun) -> tuple[int, float] | None:
    """(partitions copied, seconds inside migrate()) from the CLI's summary line."""
    match = _COPIED.search(run.output.replace("\n", " "))
    return (int(match.group(1)), float(match.group(2))) if match else None


# ------------------------------------------------------------------ where migrate's time goes


def breakdown(home: Path, plan: MigrationPlan, run: ProcessRun) -> dict[str, Any]:
    """Split one migrate's wall time using Dagster's own run records and asset metadata.

    startup: process start to the first run (imports, instance, lock); schema: the schema
    run (a no-op upgrade plus its check); plan+spawn: schema end to the first partition run
    (statuses, worker start-up); partitions: first partition start to last partition end;
    per run, `copy_seconds` is the asset's own copy+verify time, the rest is Dagster's.
    """
    from dagster import AssetKey, DagsterInstance

    instance = DagsterInstance.from_config(str(home))
    try:
        runs = [r for r in instance.get_run_records() if r.start_time and r.end_time]
        copy_seconds = _copy_seconds(instance, plan, AssetKey)
    finally:
        instance.dispose()
    parts = [r for r in runs if "dagster/partition" in r.dagster_run.tags]
    others = sorted((r for r in runs if r not in parts), key=lambda r: r.start_time or 0)
    if not parts or len(others) < 2:
        return {}
    schema, sequences = others[0], others[-1]
    first = min(r.start_time or 0 for r in parts)
    last = max(r.end_time or 0 for r in parts)
    run_sum = sum((r.end_time or 0) - (r.start_time or 0) for r in parts)
    copy_sum = sum(copy_seconds.get(r.dagster_run.run_id, 0.0) for r in parts)
    return {
        "wall": run.seconds,
        "startup": (schema.start_time or 0) - run.started_at,
        "schema_run": (schema.end_time or 0) - (schema.start_time or 0),
        "plan_and_spawn": first - (schema.end_time or 0),
        "partitions_wall": last - first,
        "partition_runs": len(parts),
        "partition_run_seconds_sum": run_sum,
        "copy_verify_seconds_sum": copy_sum,
        "dagster_overhead_per_run": (run_sum - copy_sum) / len(parts),
        "sequences_run": (sequences.end_time or 0) - (sequences.start_time or 0),
        "exit": run.ended_at - (sequences.end_time or 0),
    }


def _copy_seconds(instance: Any, plan: MigrationPlan, asset_key: Any) -> dict[str, float]:
    """run id -> the `seconds` metadata of the slices it materialized (0 if absent)."""
    seconds: dict[str, float] = {}
    for table in plan.tables:
        limit = 4 * table.slicing.partitions + 10
        for record in instance.fetch_materializations(asset_key(table.asset_path), limit).records:
            value = float(
                getattr(record.asset_materialization.metadata.get("seconds"), "value", 0.0) or 0.0
            )
            seconds[record.run_id] = seconds.get(record.run_id, 0.0) + value  # several a run
    return seconds


# ------------------------------------------------------------------ one repeat


@dataclass
class Repeat:
    seconds: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    load: dict[str, float] = field(default_factory=dict)  # 1-min load average at each start
    memory: dict[str, Any] = field(default_factory=dict)
    breakdown: dict[str, Any] = field(default_factory=dict)
    rerun_copied: int | None = None
    migrate_inner_seconds: float | None = None

    def record(self, key: str, cost: Cost) -> None:
        self.seconds[key], self.cpu[key] = cost.seconds, cost.cpu


def settle(bench: Bench, rep: Repeat, key: str) -> None:
    """Start every step from the same quiet state, off the clock: CHECKPOINT every server
    and flush the page cache, so one step's dirty pages are not written during the next.
    The load average is kept because other work on the machine skews wall times."""
    for server in (bench.stack.source, bench.stack.target, bench.stack.dagster):
        if server is not None:
            server.admin("CHECKPOINT")
    os.sync()
    rep.load[key] = round(os.getloadavg()[0], 2)


def run_repeat(bench: Bench, index: int, total: int) -> Repeat:
    """Every step once, each copy into its own empty target."""
    rep = Repeat()
    for key, baseline in (("baseline_a", baseline_pg_dump), ("baseline_b", baseline_copy)):
        with fresh_target(bench) as url:
            settle(bench, rep, key)
            with clocked(bench.stack) as cost:
                baseline(bench, url)
            rep.record(key, cost)
            check_counts(bench, url, STEPS[key])
    with fresh_target(bench) as url, fresh_dagster_home(bench) as home:
        _measure_migrate(bench, rep, url, home)
        _measure_after_migrate(bench, rep, cli_env(bench, url, home), url)
    _say(
        f"repeat {index}/{total}: "
        + ", ".join(f"{k} {v:.2f} s ({rep.cpu[k]:.1f} CPU s)" for k, v in rep.seconds.items())
        + f"; re-run copied {rep.rerun_copied} partitions; load {max(rep.load.values()):.1f}"
    )
    return rep


def _timed_cli(
    bench: Bench, rep: Repeat, key: str, args: list[str], env: dict[str, str]
) -> ProcessRun:
    settle(bench, rep, key)
    with clocked(bench.stack) as cost:
        run = _cli_checked(bench, args, env)
    rep.record(key, cost)
    return run


def _measure_migrate(bench: Bench, rep: Repeat, url: str, home: Path) -> None:
    env = cli_env(bench, url, home)
    run = _timed_cli(bench, rep, "migrate", ["migrate", "--workers", str(bench.workers)], env)
    check_counts(bench, url, STEPS["migrate"])
    rep.memory = memory(run)
    rep.migrate_inner_seconds = (copied_partitions(run) or (0, None))[1]
    assert bench.plan is not None
    rep.breakdown = breakdown(home, bench.plan, run)


def _measure_after_migrate(bench: Bench, rep: Repeat, env: dict[str, str], url: str) -> None:
    """verify right after migrate, as a user would run it, then the nothing-to-do re-run."""
    _timed_cli(bench, rep, "verify", ["verify"], env)
    rerun = _timed_cli(bench, rep, "rerun", ["migrate", "--workers", str(bench.workers)], env)
    check_counts(bench, url, STEPS["rerun"])
    rep.rerun_copied = (copied_partitions(rerun) or (None, 0.0))[0]


# ------------------------------------------------------------------ a small database


def small_ddl() -> str:
    """14 tables in a schema of their own, each referencing the one before."""
    parts = [f"CREATE SCHEMA {SMALL_SCHEMA};"]
    for i in range(1, SMALL_TABLES + 1):
        ref = f" REFERENCES {SMALL_SCHEMA}.t{i - 1:02d} (id)" if i > 1 else ""
        parts.append(
            f"CREATE TABLE {SMALL_SCHEMA}.t{i:02d} (id bigint PRIMARY KEY, parent bigint{ref}, "
            "label text NOT NULL, amount numeric(12, 2), happened_at timestamptz NOT NULL, "
            "attrs jsonb, active boolean NOT NULL);"
        )
    return "\n".join(parts)


def _small_rows(i: int) -> int:
    base, extra = divmod(SMALL_ROWS, SMALL_TABLES)
    return base + (1 if i <= extra else 0)


def prepare_small(bench: Bench) -> Bench:
    """The small source, its plan and counts, as a Bench of its own on the same stack."""
    assert bench.stack.source is not None
    small = Bench(  # one name counter: its databases and homes share the stack and `work`
        bench.stack,
        bench.work,
        bench.workers,
        bench.dagster_storage,
        serial=bench.serial,
        ddl=small_ddl(),
    )
    name = small.name("small")
    url = bench.stack.create_source_database(name)
    with psycopg.connect(url) as conn:
        conn.execute(small.ddl)
        for i in range(1, SMALL_TABLES + 1):
            parent = f"1 + g % {_small_rows(i - 1)}" if i > 1 else "NULL"
            conn.execute(
                f"INSERT INTO {SMALL_SCHEMA}.t{i:02d} SELECT g, {parent}, 'row ' || g, g * 1.25, "
                "timestamptz '2025-01-01' + g * interval '1 hour', jsonb_build_object('g', g), "
                f"g % 2 = 0 FROM generate_series(1, {_small_rows(i)}) g"
            )
    bench.stack.source.admin("VACUUM (FREEZE, ANALYZE)", dbname=name)
    small.source_url = url
    small.plan_path = bench.work / f"plan-{name}.json"
    _cli_checked(small, ["plan", "--out", str(small.plan_path)], cli_env(small, "", None))
    small.plan = load_plan(small.plan_path)
    small.source_counts = table_counts(url, small.tables)
    return small


def measure_small(bench: Bench, repeats: int) -> dict[str, Any]:
    """Cold migrate of the small database against pg_dump | psql, median of `repeats`."""
    small = prepare_small(bench)
    runs: dict[str, list[float]] = {"baseline_a": [], "migrate": []}
    breakdowns: list[dict[str, Any]] = []
    for _ in range(repeats):
        rep = Repeat()
        with fresh_target(small) as url:
            settle(small, rep, "baseline_a")
            with clocked(small.stack) as cost:
                baseline_pg_dump(small, url)
            check_counts(small, url, "small: " + STEPS["baseline_a"])
            runs["baseline_a"].append(cost.seconds)
        with fresh_target(small) as url, fresh_dagster_home(small) as home:
            argv = ["migrate", "--workers", str(small.workers)]
            run = _timed_cli(small, rep, "migrate", argv, cli_env(small, url, home))
            check_counts(small, url, "small: " + STEPS["migrate"])
            runs["migrate"].append(rep.seconds["migrate"])
            assert small.plan is not None
            breakdowns.append(breakdown(home, small.plan, run))
    medians = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "tables": len(small.tables),
        "rows": small.total_rows,
        "partitions": small.plan.total_partitions() if small.plan else 0,
        "baseline_a_seconds": round(medians["baseline_a"], 3),
        "migrate_seconds": round(medians["migrate"], 3),
        "migrate_runs": [round(x, 3) for x in runs["migrate"]],
        "ratio_to_baseline_a": round(medians["migrate"] / medians["baseline_a"], 2),
        "target": f"<= {SMALL_TARGET_SECONDS:.0f} s wall",
        "target_met": medians["migrate"] <= SMALL_TARGET_SECONDS,
        "migrate_breakdown_median_repeat": sorted(breakdowns, key=lambda b: b.get("wall", 0))[
            len(breakdowns) // 2
        ],
    }


# ------------------------------------------------------------------ report


def summarize(bench: Bench, repeats: list[Repeat], args: argparse.Namespace) -> dict[str, Any]:
    """Medians, rows/s and ratios to baseline A, as printed and as written to JSON."""
    medians = {k: statistics.median(r.seconds[k] for r in repeats) for k in STEPS}
    base = medians["baseline_a"]
    steps = [_step_row(k, medians[k], base, bench.total_rows, repeats) for k in STEPS]
    mid = sorted(repeats, key=lambda r: r.seconds["migrate"])[len(repeats) // 2]
    return {
        "benchmark": "issues 6 and 13: migrate vs pg_dump | psql and a binary COPY stream",
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "code": _git_state(),
        "machine": _machine(bench),
        "scale": {
            "requested_rows": args.rows,
            "patients": patients_for(args.rows),
            "rows": bench.total_rows,
            "tables": bench.source_counts,
        },
        "settings": _settings(bench, args),
        "steps": steps,
        "rss": _rss_summary(repeats),
        "migrate_breakdown_median_repeat": mid.breakdown,
        "migrate_inner_seconds": [r.migrate_inner_seconds for r in repeats],
        "rerun_copied_partitions": [r.rerun_copied for r in repeats],
        "row_checks_passed": True,  # any failure raised before we got here
    }


def _step_row(
    key: str, seconds: float, base: float, rows: int, repeats: list[Repeat]
) -> dict[str, Any]:
    """One step's medians. `paired_ratio` divides within each repeat before taking the
    median: steps minutes apart share the machine's load, so it drifts less than the ratio
    of medians when other work comes and goes."""
    ratio = seconds / base
    target = TARGETS.get(key)
    if key == "migrate" and rows >= ABOUT_5M:
        target = MIGRATE_TARGET_AT_5M
    paired = statistics.median(r.seconds[key] / r.seconds["baseline_a"] for r in repeats)
    return {
        "key": key,
        "step": STEPS[key],
        "seconds": round(seconds, 3),
        "runs": [round(r.seconds[key], 3) for r in repeats],
        "cpu_seconds": round(statistics.median(r.cpu[key] for r in repeats), 2),
        "cpu_runs": [round(r.cpu[key], 2) for r in repeats],
        "load_average_at_start": [r.load.get(key) for r in repeats],
        "rows_per_second": None if key == "rerun" else round(rows / seconds),
        "ratio_to_baseline_a": round(ratio, 3),
        "paired_ratio_to_baseline_a": round(paired, 3),
        "target": target[0] if target else None,
        "target_met": target[1](seconds, ratio) if target else None,
        "row_check": "passed" if key != "verify" else "verify exit 0",
    }


MEMORY_METHOD = (
    f"peak_tree: summed RSS of migrate and every descendant (workers, resource tracker), "
    f"sampled from /proc every {RSS_POLL_SECONDS} s; shared pages count once per process, so "
    "it errs high. pss_at_peak: the tree's summed PSS (shared pages split between their "
    "users) at that RSS peak. max_process: wait4() ru_maxrss, the kernel's exact peak of the "
    "largest single process in the tree."
)


def memory(run: ProcessRun) -> dict[str, Any]:
    """One migrate's peaks in MB, as reported everywhere."""
    return {
        "peak_tree_mb": round(run.peak_tree_rss / MB, 1),
        "pss_at_peak_mb": round(run.tree_pss_at_peak / MB, 1),
        "max_process_mb": round(run.max_process_rss / MB, 1),
        "processes_at_peak_mb": sorted(
            ([name, round(rss / MB, 1)] for name, rss in run.processes_at_peak),
            key=lambda item: str(item[0]),
        ),
    }


def _rss_summary(repeats: list[Repeat]) -> dict[str, Any]:
    """The worst repeat's numbers: a memory target is about the peak, not a typical run."""
    worst = max(repeats, key=lambda r: r.memory["peak_tree_mb"]).memory
    return {
        **{f"migrate_{k}": v for k, v in worst.items()},
        "target_mb": RSS_TARGET_MB,
        "target_met": worst["peak_tree_mb"] <= RSS_TARGET_MB,
        "method": MEMORY_METHOD + " Worst of the repeats.",
    }


def _settings(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    assert bench.plan is not None
    return {
        "repeats": args.repeats,
        "workers": bench.workers,
        "dagster_storage": bench.dagster_storage,
        "partitions": bench.plan.total_partitions(),
        "partitions_per_table": {t.qualified: t.slicing.partitions for t in bench.tables},
        "plan": "migration-assets plan, default sizing, written once",
    }


def _machine(bench: Bench) -> dict[str, Any]:
    assert bench.stack.source is not None
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "postgresql": bench.stack.source.version,
        "platform": platform.platform(),
    }


def _git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        proc = subprocess.run(
            ["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True, check=False
        )
        return proc.stdout.strip()

    commit = git("rev-parse", "HEAD")
    if not commit:  # not a git checkout: say nothing rather than "clean"
        return {"commit": None, "dirty": None, "diff_sha256": None}
    diff = git("diff", "HEAD")  # names the exact code measured when the tree has edits
    return {
        "commit": commit,
        "dirty": bool(git("status", "--short")),
        "diff_sha256": hashlib.sha256(diff.encode()).hexdigest()[:16] if diff else None,
    }


def render(result: dict[str, Any]) -> str:
    """The one table (Markdown, so it pastes into the issue), then RSS and the breakdown."""
    scale, settings = result["scale"], result["settings"]
    lines = [
        f"{scale['rows']:,} rows ({scale['patients']:,} patients), median of "
        f"{settings['repeats']}, --workers {settings['workers']}, {settings['partitions']} "
        f"partitions, Dagster storage: {settings['dagster_storage']}",
        "",
        "| step | seconds (median) | rows/s | ratio to A | paired ratio | CPU s "
        "| issue 13 target |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for s in result["steps"]:
        rate = f"{s['rows_per_second']:,}" if s["rows_per_second"] is not None else "-"
        target = "-" if s["target"] is None else f"{s['target']} ({_met(s['target_met'])})"
        step = s["step"].replace("|", "\\|")  # a pipe in a cell would end it
        lines.append(
            f"| {step} | {s['seconds']:.2f} | {rate} | {s['ratio_to_baseline_a']:.2f}x "
            f"| {s['paired_ratio_to_baseline_a']:.2f}x | {s['cpu_seconds']:.1f} | {target} |"
        )
    rss = result["rss"]
    lines += [
        "",
        f"migrate peak RSS: {rss['migrate_peak_tree_mb']:.0f} MB summed over the process tree "
        f"(PSS {rss['migrate_pss_at_peak_mb']:.0f} MB; largest single process "
        f"{rss['migrate_max_process_mb']:.0f} MB); target <= "
        f"{rss['target_mb']} MB ({_met(rss['target_met'])})",
        "  at that peak: "
        + ", ".join(f"{name} {mb:.0f} MB" for name, mb in rss["migrate_processes_at_peak_mb"]),
    ]
    lines += _render_breakdown(result["migrate_breakdown_median_repeat"])
    lines += _render_small(result.get("small"))
    lines.append(
        "paired ratio: median over repeats of (step / baseline A) in the same repeat. CPU s: "
        "median CPU seconds of client and servers together, steadier than wall time on a "
        "busy machine."
    )
    return "\n".join(lines)


def _render_small(small: dict[str, Any] | None) -> list[str]:
    if not small:
        return []
    return [
        f"small database ({small['tables']} tables, {small['rows']:,} rows, "
        f"{small['partitions']} partitions): migrate (cold, verified) "
        f"{small['migrate_seconds']:.2f} s, pg_dump --data-only | psql "
        f"{small['baseline_a_seconds']:.2f} s ({small['ratio_to_baseline_a']:.2f}x); target "
        f"{small['target']} ({_met(small['target_met'])})",
        *("  " + line for line in _render_breakdown(small["migrate_breakdown_median_repeat"])),
    ]


def _met(ok: bool | None) -> str:
    return "met" if ok else "NOT met"


def _render_breakdown(b: dict[str, Any]) -> list[str]:
    if not b:
        return ["(no Dagster run records to break migrate's time down)"]
    return [
        f"inside migrate (median repeat, {b['wall']:.2f} s wall): startup {b['startup']:.2f} s, "
        f"schema run {b['schema_run']:.2f} s, plan+spawn {b['plan_and_spawn']:.2f} s, "
        f"partitions {b['partitions_wall']:.2f} s wall, sequences run {b['sequences_run']:.2f} s, "
        f"exit {b['exit']:.2f} s",
        f"  {b['partition_runs']} partition runs: {b['partition_run_seconds_sum']:.2f} s summed "
        f"over workers, of which copy+verify {b['copy_verify_seconds_sum']:.2f} s; Dagster "
        f"overhead {b['dagster_overhead_per_run']:.2f} s per run",
    ]


# ------------------------------------------------------------------ RSS at several scales


def rss_scales(bench: Bench, scales: list[int]) -> dict[str, Any]:
    """Only migrate's peak memory, one cold migrate per scale: it must not grow with rows."""
    rows = []
    for scale in scales:
        prepare_source(bench, bench.name("clinic"), scale)
        with fresh_target(bench) as url, fresh_dagster_home(bench) as home:
            env = cli_env(bench, url, home)
            run = _cli_checked(bench, ["migrate", "--workers", str(bench.workers)], env)
            check_counts(bench, url, "migrate")
        assert bench.plan is not None
        rows.append(
            {
                "requested_rows": scale,
                "rows": bench.total_rows,
                "partitions": bench.plan.total_partitions(),
                "migrate_seconds": round(run.seconds, 3),
                **memory(run),
            }
        )
        _say(f"{bench.total_rows:,} rows: peak RSS {run.peak_tree_rss / MB:.0f} MB")
    return {
        "benchmark": "issue 6: migrate peak RSS by scale",
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "code": _git_state(),
        "machine": _machine(bench),
        "workers": bench.workers,
        "dagster_storage": bench.dagster_storage,
        "scales": rows,
        "row_checks_passed": True,
        "method": MEMORY_METHOD,
    }


def render_rss(result: dict[str, Any]) -> str:
    lines = [
        "| rows | partitions | migrate seconds | peak RSS, tree (MB) | PSS at peak (MB) "
        "| largest process (MB) |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["scales"]:
        lines.append(
            f"| {r['rows']:,} | {r['partitions']} | {r['migrate_seconds']:.1f} | "
            f"{r['peak_tree_mb']:.0f} | {r['pss_at_peak_mb']:.0f} | {r['max_process_mb']:.0f} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------ main


def _say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _scales(text: str) -> list[int]:
    return [int(part.replace("_", "")) for part in text.split(",") if part.strip()]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help="rows in total (about)")
    parser.add_argument("--repeats", type=int, default=3, help="median of this many repeats")
    parser.add_argument("--workers", type=int, default=2, help="migrate --workers")
    parser.add_argument("--json", type=Path, help="results file (default: benchmarks/results/)")
    parser.add_argument(
        "--rss-scales",
        type=_scales,
        help="comma-separated row counts: only measure migrate's peak RSS at each",
    )
    parser.add_argument(
        "--dagster-storage",
        choices=["postgres", "sqlite"],
        default="postgres",
        help="DAGSTER_HOME per repeat: a fresh database on the stack's Dagster server "
        "(default, as the design prescribes) or an empty directory (SQLite)",
    )
    parser.add_argument(
        "--small-only",
        action="store_true",
        help="only the small database's line (fixed and per-run costs), in about a minute",
    )
    args = parser.parse_args(argv)
    if args.rows < 100 or args.repeats < 1 or args.workers < 1:
        parser.error("--rows must be >= 100, --repeats and --workers >= 1")
    default = "rss-scales.json" if args.rss_scales else "latest.json"
    default = "small.json" if args.small_only else default
    args.json = args.json or RESULTS_DIR / default
    return args


def benchmark(args: argparse.Namespace, bench: Bench) -> str:
    """Run what the arguments ask for, write the JSON, return the text to print."""
    if args.rss_scales:
        result = rss_scales(bench, args.rss_scales)
        text = render_rss(result)
    elif args.small_only:
        result = {"small": measure_small(bench, args.repeats)}
        text = "\n".join(_render_small(result["small"]))
    else:
        prepare_source(bench, bench.name("clinic"), args.rows)
        repeats = [run_repeat(bench, i + 1, args.repeats) for i in range(args.repeats)]
        result = summarize(bench, repeats, args)
        result["small"] = measure_small(bench, args.repeats)
        text = render(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    return text + f"\n\nwritten to {args.json}"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ["DAGSTER_DISABLE_TELEMETRY"] = "1"
    with DevStack(pooler=False) as stack, tempfile.TemporaryDirectory() as tmp:
        os.environ["DAGSTER_PG_PASSWORD"] = stack.passwords["dagster"]  # for our own reads
        work = Path(tmp)
        bench = Bench(
            stack=stack, work=work, workers=args.workers, dagster_storage=args.dagster_storage
        )
        try:
            print(benchmark(args, bench))
        except BenchmarkError as exc:
            print(f"benchmark failed: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
