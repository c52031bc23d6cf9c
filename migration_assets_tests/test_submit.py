"""`migrate --submit`: the runs of `migrate`, launched through the webserver, executed by
the instance's run queue and launcher.

Each test gets its own PostgreSQL-backed Dagster instance with the QueuedRunCoordinator and
the default run launcher (a process per run), as deploy/dagster.yaml sets up production, and
starts `dagster-daemon run` and `dagster-webserver` (each `-w workspace.yaml`) itself when it
needs them. The instance's default pool limit is 4 while MIGRATION_TARGET_CONNECTIONS says
less: the limit the operator set is the one the target must see.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest

from migration_assets.cli.ui import group_members
from migration_assets.db.dsn import display_url, parse_dsn
from migration_assets.db.schema import alembic_upgrade
from migration_assets.defs.keys import TARGET_POOL
from migration_assets.devstack.cluster import LOOPBACK, free_port
from migration_assets.devstack.shape import dagster_yaml
from migration_assets.devstack.stack import DevStack
from migration_assets.engine.submit import DAEMON_WAIT_SECONDS, Webserver
from migration_assets.plan import MigrationPlan, load_plan
from migration_assets_tests.conftest import (
    ALEMBIC_INI,
    REPO_ROOT,
    Migration,
    MigrationFactory,
    unique,
)
from migration_assets_tests.faults import slow_down, speed_up, wait_for_copy
from migration_assets_tests.helpers import (
    PLAN_ARGS,
    assert_equal_databases,
    cli_process,
    run_cli,
    user_tables,
)
from migration_assets_tests.waiting import process_gone, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# PLAN_ARGS keeps to a few slices per big table: each run is a process that imports Dagster
# and loads the code location, about 10 s on this 2-core machine (150 rows per slice made
# 34 runs, > 7 min).
YAML_POOL_LIMIT = 4  # the instance's default; the setting below must win over it
MIGRATION_APP = "migration_assets"
SLOW_TABLE = "public.observations"
PARTITION_TAG = "dagster/partition"
DAEMON = Path(sys.executable).with_name("dagster-daemon")
WEBSERVER = Path(sys.executable).with_name("dagster-webserver")
START_SECONDS = 240.0  # a daemon's or webserver's first start on a loaded 2-core machine
# `migrate --submit` with a shorter bound of daemon silence than DAEMON_SILENT_SECONDS (90 s):
# the daemon beats every 30 s, so this still tolerates one late beat, and the test waits less.
TEST_SILENCE = 50.0
SUBMIT_WITH_SILENCE = (
    "import sys; from migration_assets.engine import submit; "
    "submit.DAEMON_SILENT_SECONDS = float(sys.argv[1]); "
    "from migration_assets.cli import main; sys.exit(main(sys.argv[2:]))"
)


@dataclass
class Queued:
    """A migration whose DAGSTER_HOME is a PostgreSQL instance with a run queue."""

    m: Migration
    stack: DevStack
    env: dict[str, str]
    cwd: Path

    @property
    def target_db(self) -> str:
        return parse_dsn(self.m.target_url)["dbname"]

    def instance(self) -> dg.DagsterInstance:
        return dg.DagsterInstance.from_config(str(self.m.dagster_home))

    def plan(self) -> MigrationPlan:
        code, output = run_cli(["plan", "--out", str(self.m.plan_path), *PLAN_ARGS])
        assert code == 0, output
        plan = load_plan(self.m.plan_path)
        assert sum(t.slicing.partitions >= 3 for t in plan.tables) >= 2, output
        return plan

    def submit(self) -> subprocess.Popen[str]:
        return cli_process(["migrate", "--submit"], self.env, self.cwd)

    def submit_watching(self, silence: float) -> subprocess.Popen[str]:
        """`migrate --submit`, giving up on a daemon silent for `silence` seconds."""
        return subprocess.Popen(
            [sys.executable, "-c", SUBMIT_WITH_SILENCE, str(silence), "migrate", "--submit"],
            env={**os.environ, **self.env},
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )


def queued_instance(
    migration: MigrationFactory,
    stack: DevStack,
    cwd: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    target_connections: int,
) -> Queued:
    assert stack.dagster is not None
    m = migration()
    dagster_db = unique("dagster_submit")
    stack.dagster.admin(f'CREATE DATABASE "{dagster_db}" OWNER dagster')
    yaml = dagster_yaml(port=stack.dagster.port, db=dagster_db, target_connections=YAML_POOL_LIMIT)
    assert "QueuedRunCoordinator" in yaml, yaml
    assert "default_limit: 4" in yaml, yaml
    (m.dagster_home / "dagster.yaml").write_text(yaml)
    extra = {
        "DAGSTER_PG_PASSWORD": stack.passwords["dagster"],
        "MIGRATION_TARGET_CONNECTIONS": str(target_connections),
    }
    for key, value in extra.items():
        monkeypatch.setenv(key, value)
    return Queued(m, stack, {**m.env(), **extra}, cwd)


@contextlib.contextmanager
def _service(q: Queued, name: str, args: list[str]) -> Iterator[subprocess.Popen[str]]:
    """A Dagster process on the workspace, in its own session, with the same settings."""
    log = (q.cwd / f"{name}_{unique('log')}.txt").open("w")
    proc = subprocess.Popen(
        [*args, "-w", str(REPO_ROOT / "workspace.yaml")],
        env={**os.environ, **q.env},
        cwd=q.cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        _stop_group(proc)
        log.close()


def _up(proc: subprocess.Popen[str], ready: Any, what: str) -> None:
    wait_until(lambda: proc.poll() is not None or ready(), START_SECONDS, what, every=0.5)
    assert proc.poll() is None, f"{what}: the process exited ({proc.args!r})"


@contextlib.contextmanager
def daemon(q: Queued) -> Iterator[subprocess.Popen[str]]:
    """`dagster-daemon run` and `dagster-webserver` beside it, both up before this yields:
    the deployment `migrate --submit` launches its runs through."""
    instance = q.instance()  # first, so the daemon's first open of the storage is not beside it
    port = free_port()
    q.env["MIGRATION_WEBSERVER_URL"] = f"http://{LOOPBACK}:{port}"
    webserver = Webserver(q.env["MIGRATION_WEBSERVER_URL"])
    with (
        _service(q, "daemon", [str(DAEMON), "run"]) as proc,
        _service(q, "webserver", [str(WEBSERVER), "-h", LOOPBACK, "-p", str(port)]) as web,
    ):
        beats = instance.get_daemon_heartbeats
        _up(proc, lambda: "QUEUED_RUN_COORDINATOR" in beats(), "the daemon's first heartbeat")
        _up(web, webserver.serving, "the webserver serving the code location")
        yield proc


def _text(path: str) -> str:
    return Path(path).read_text()[-4000:]


def _stop_group(proc: subprocess.Popen[str]) -> None:
    """SIGTERM to the daemon's session (its code server and run workers), then SIGKILL."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


def finish(proc: subprocess.Popen[str], timeout: float) -> tuple[int, str]:
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        output, _ = proc.communicate(timeout=10)
        pytest.fail(f"`migrate --submit` did not end within {timeout:.0f}s:\n{output}")
    return proc.returncode, output


# ------------------------------------------------------------------ target connections


@dataclass
class ConnectionSampler:
    """Every ~50 ms: migration connections open on the target database."""

    conninfo: str
    dbname: str
    samples: list[int] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> ConnectionSampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            with psycopg.connect(self.conninfo, autocommit=True) as conn:
                while not self._stop.is_set():
                    row = conn.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                        "AND application_name = %s",
                        [self.dbname, MIGRATION_APP],
                    ).fetchone()
                    assert row is not None
                    self.samples.append(int(row[0]))
                    time.sleep(0.05)
        except BaseException as exc:  # reported by the test, not lost in a thread
            self.errors.append(exc)


# ------------------------------------------------------------------ what the instance says


def statuses(instance: dg.DagsterInstance, plan: MigrationPlan) -> dict[str, dict[str, str]]:
    """Dagster's own partition statuses per table (MISSING where it has none)."""
    out: dict[str, dict[str, str]] = {}
    for t in plan.tables:
        keys = t.partition_keys
        raw = instance.get_status_by_partition(
            dg.AssetKey(t.asset_path), keys, dg.StaticPartitionsDefinition(keys)
        )
        out[t.qualified] = {k: str(getattr(s, "value", s)) for k, s in (raw or {}).items()}
        for k in keys:
            out[t.qualified].setdefault(k, "MISSING")
    return out


def status_rows(output: str, plan: MigrationPlan) -> dict[str, list[str]]:
    """`migration-assets status`: per asset, materialized/failed/missing/in progress/total."""
    rows = {}
    for t in plan.tables:
        asset = "/".join(t.asset_path)
        line = next(x for x in output.splitlines() if re.search(rf"│ {re.escape(asset)} +│", x))
        rows[t.qualified] = [c.strip() for c in line.strip("│ ").split("│")][1:]
    return rows


def launched_by_the_launcher(instance: dg.DagsterInstance) -> dict[str, int]:
    """Run id -> pid of the process that executed it, for runs that were queued, launched by
    the daemon and started in a run worker process; raises for any run that was not."""
    pids = {}
    for record in instance.get_run_records():
        run_id = record.dagster_run.run_id
        events = instance.all_logs(run_id)
        types = [e.dagster_event.event_type for e in events if e.dagster_event is not None]
        order = [
            dg.DagsterEventType.RUN_ENQUEUED,  # the QueuedRunCoordinator took it
            dg.DagsterEventType.RUN_STARTING,  # the daemon handed it to the run launcher
            dg.DagsterEventType.RUN_START,
            dg.DagsterEventType.RUN_SUCCESS,
        ]
        assert [t for t in types if t in order] == order, (run_id, types)
        started = [
            int(m.group(1))
            for e in events
            if (m := re.fullmatch(r"Started process for run \(pid: (\d+)\)\.", _message(e)))
        ]
        assert len(started) == 1, (run_id, [_message(e) for e in events])
        pids[run_id] = started[0]
    return pids


def _message(entry: Any) -> str:
    event = entry.dagster_event
    return str(event.message or "") if event is not None else str(entry.user_message)


# ------------------------------------------------------------------ tests


def test_submit_with_a_daemon_and_the_queued_coordinator_ends_equal(
    migration: MigrationFactory,
    stack: DevStack,
    isolated_cwd: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    limit = 2
    q = queued_instance(migration, stack, isolated_cwd, monkeypatch, target_connections=limit)
    plan = q.plan()
    # slices of one table that take seconds, so runs overlap and the pool has to hold some back
    alembic_upgrade(q.m.target_url, sslrootcert=str(q.m.ca_file), config_path=ALEMBIC_INI)
    slow_down(q.m.target_url, SLOW_TABLE, 0.005)
    assert stack.target is not None
    with daemon(q):
        with ConnectionSampler(stack.target.admin_conninfo(q.target_db), q.target_db) as sampler:
            code, output = finish(q.submit(), timeout=420)
        first_runs = {r.dagster_run.run_id for r in q.instance().get_run_records()}
        # --force reaches each slice's run as run config, as `migrate --force` gives it. Not
        # sampled: the pooler keeps the server connection the tail's `pooler_ready` opened
        # (in our name) until its idle timeout, beside the slices this pass copies again.
        forced = finish(cli_process(["migrate", "--submit", "--force"], q.env, q.cwd), 420)
    assert not sampler.errors, sampler.errors
    total = plan.total_partitions()
    assert forced[0] == 0, forced[1]
    assert f"migrate: {total} partition(s) copied and verified, 0 failed" in forced[1], forced[1]
    assert code == 0, output
    assert "launching the runs through the Dagster webserver" in output, output
    assert re.search(r"migrate: \d+ partition\(s\) copied and verified, 0 failed", output), output
    assert_equal_databases(q.m.source_url, q.m.target_url)

    assert sampler.samples, "the sampler took no sample"
    assert max(sampler.samples) >= 1, "the sampler saw no migration at work"
    assert max(sampler.samples) <= limit, (
        f"{max(sampler.samples)} migration connections on the target, limit {limit}"
    )

    instance = q.instance()
    pool = instance.event_log_storage.get_concurrency_info(TARGET_POOL)
    assert pool.slot_count == limit, f"the instance's pool allows {pool.slot_count}, not {limit}"
    pids = launched_by_the_launcher(instance)
    slice_runs = {
        (r.dagster_run.tags.get(PARTITION_TAG), r.dagster_run.asset_selection)
        for r in instance.get_run_records()
        if r.dagster_run.run_id in first_runs
    }
    pids = {run_id: pid for run_id, pid in pids.items() if run_id in first_runs}
    assert len(pids) >= 3, pids  # the head, slices, the tail
    assert len(slice_runs) == len(pids), "a run was launched twice"
    assert len(set(pids.values())) == len(pids), "runs shared a process"
    assert os.getpid() not in pids.values()

    dagster_says = statuses(instance, plan)
    code, output = run_cli(["status"])
    assert code == 0, output
    for table, row in status_rows(output, plan).items():
        keys = dagster_says[table]
        assert set(keys.values()) == {"MATERIALIZED"}, (table, keys)
        assert row == [str(len(keys)), "0", "0", "0", str(len(keys))], (table, row)


def test_submit_without_a_daemon_says_so_within_seconds(
    migration: MigrationFactory,
    stack: DevStack,
    isolated_cwd: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    q = queued_instance(migration, stack, isolated_cwd, monkeypatch, target_connections=2)
    q.plan()
    started = time.monotonic()
    code, output = finish(q.submit(), timeout=120)
    seconds = time.monotonic() - started
    assert code == 2, output
    # the daemon's heartbeat wait plus a CLI process start on a loaded machine, never the
    # wait for a backfill nobody runs
    limit = DAEMON_WAIT_SECONDS + 30
    assert seconds < limit, f"took {seconds:.0f}s to notice there is no daemon"
    assert "`dagster-daemon run -w workspace.yaml`" in " ".join(output.split()), output
    assert user_tables(q.m.target_url) == [], "the target was written without a daemon"
    instance = q.instance()
    assert instance.get_run_records() == []


def test_submit_stops_following_when_the_daemon_stops_beating(
    migration: MigrationFactory,
    stack: DevStack,
    isolated_cwd: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No webserver where MIGRATION_WEBSERVER_URL points: refused at once, nothing launched.
    Then the daemon dies (SIGKILL, with its run workers) just before a migration: its last
    beat is fresh, so `--submit` launches, and its first run waits in the queue. `--submit`
    ends within the bound, exit 2, saying to start a daemon again and that the queued runs
    stay; nothing it launched is cancelled, and a local `migrate` refuses to run beside them."""
    q = queued_instance(migration, stack, isolated_cwd, monkeypatch, target_connections=1)
    q.plan()
    instance = q.instance()
    with daemon(q) as running:
        served = q.env["MIGRATION_WEBSERVER_URL"]
        q.env["MIGRATION_WEBSERVER_URL"] = f"http://{LOOPBACK}:{free_port()}"
        code, output = finish(q.submit(), timeout=120)
        assert code == 2, output
        assert "cannot reach the Dagster webserver" in " ".join(output.split()), output
        assert instance.get_run_records() == [], "runs were launched without a webserver"
        q.env["MIGRATION_WEBSERVER_URL"] = served
        os.killpg(running.pid, signal.SIGKILL)
        killed = time.monotonic()
        process_gone(running)
        wait_until(lambda: not group_members(running.pid), 60, "the daemon's processes")
        proc = q.submit_watching(TEST_SILENCE)
        try:
            code, output = finish(proc, timeout=TEST_SILENCE + 120)
            seconds = time.monotonic() - killed
            print(f"`--submit` ended {seconds:.1f}s after the daemon was killed")
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            process_gone(proc)
    assert code == 2, output
    said = " ".join(output.split())
    assert "no run queue heartbeat" in said, output
    assert "`dagster-daemon run -w workspace.yaml`" in said, output
    assert "They stay queued and start once a daemon runs again" in said, output
    # the last beat came before the kill; one poll and the CLI's exit on a loaded machine
    assert seconds < TEST_SILENCE + 20, f"ended {seconds:.0f}s after the daemon was killed"
    runs = q.instance().get_run_records()
    assert [r.dagster_run.status for r in runs] == [dg.DagsterRunStatus.QUEUED], runs

    code, output = run_cli(["migrate", "--workers", "1"])
    assert code == 2, output
    assert "runs wait in this Dagster instance's run queue" in " ".join(output.split()), output
    assert user_tables(q.m.target_url) == [], "the target was written beside queued runs"


def test_submit_exits_2_like_migrate_when_the_schema_step_cannot_run(
    migration: MigrationFactory,
    stack: DevStack,
    isolated_cwd: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A wrong target password fails the backfill's preflight run: bad input, exit 2 with
    the reason, as `migrate` says it; nothing written, the password never printed."""
    q = queued_instance(migration, stack, isolated_cwd, monkeypatch, target_connections=2)
    q.plan()
    params = parse_dsn(q.m.target_url)
    params["password"] = "wrong-password"
    q.env["SUPABASE_DB_URL"] = display_url(params, mask=False)
    with daemon(q):
        code, output = finish(q.submit(), timeout=300)
    assert code == 2, output
    assert "preflight or schema step failed" in output, output
    assert "password (or user) was rejected" in " ".join(output.split()), output
    assert "wrong-password" not in output
    assert user_tables(q.m.target_url) == [], "the target was written"


def _client_pids(conninfo: str, backend_pid: int) -> list[int]:
    """Local processes holding the TCP connection of the target backend `backend_pid`."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute(
            "SELECT client_port FROM pg_stat_activity WHERE pid = %s", [backend_pid]
        ).fetchone()
    assert row is not None, "the COPY's backend is gone"
    assert row[0] is not None, "the COPY's backend has no TCP client"
    port = f":{int(row[0]):04X}"
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[1].endswith(port):
                    inodes.add(f"socket:[{fields[9]}]")
    owners = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        owners.add(int(proc.name))
    return sorted(owners)


def _failed_keys(instance: dg.DagsterInstance, plan: MigrationPlan) -> dict[str, list[str]]:
    found = {
        table: sorted(k for k, s in keys.items() if s == "FAILED")
        for table, keys in statuses(instance, plan).items()
    }
    return {table: keys for table, keys in found.items() if keys}


def test_a_run_killed_mid_slice_is_failed_and_redone(
    migration: MigrationFactory,
    stack: DevStack,
    isolated_cwd: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    q = queued_instance(migration, stack, isolated_cwd, monkeypatch, target_connections=1)
    plan = q.plan()
    alembic_upgrade(q.m.target_url, sslrootcert=str(q.m.ca_file), config_path=ALEMBIC_INI)
    slow_down(q.m.target_url, SLOW_TABLE, 0.05)  # a slice of ~800 rows: half a minute
    assert stack.target is not None
    admin = stack.target.admin_conninfo(q.target_db)
    with daemon(q):
        proc = q.submit()
        try:
            backend = wait_for_copy(
                stack.target.admin_conninfo(), q.target_db, timeout=240, into=SLOW_TABLE
            )
            workers = wait_until(
                lambda: _client_pids(admin, backend), 10, "the process holding the COPY", 0.05
            )
            assert proc.pid not in workers, "the CLI itself copies: nothing was submitted"
            for pid in workers:
                os.kill(pid, signal.SIGKILL)
            speed_up(q.m.target_url, SLOW_TABLE)  # the slices still to come copy at speed
            instance = q.instance()
            failed = wait_until(
                lambda: _failed_keys(instance, plan), 90, "the killed slice to show FAILED", 0.5
            )
            code, output = finish(proc, timeout=300)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert list(failed) == [SLOW_TABLE], failed
    assert len(failed[SLOW_TABLE]) == 1, failed
    assert code == 1, output
    assert "1 failed" in output, output
    assert "failed partitions are FAILED" in output, output
    assert _failed_keys(q.instance(), plan) == failed, "other slices failed too"

    code, output = run_cli(["migrate", "--workers", "1"])
    assert code == 0, output
    assert "migrate: 1 partition(s) copied" in output, output
    assert_equal_databases(q.m.source_url, q.m.target_url)
