"""The Dagster UI as the operator's console, driven in a real browser (headless Chromium).

`migration-assets ui` serves a small migration (300 patients, several partitions per table) from
its settings, as an operator would run it. The test clicks "Materialize all" on the asset graph
and launches the backfill of every partition of every table, waits, and reads the outcome off
the pages; then it breaks one slice on the target and sees `table_checksum` fail when re-run
from the checks tab.

The same backfill proves the connection limit (MIGRATION_TARGET_CONNECTIONS=2). A tiny
migration finishes each slice in milliseconds, so on its own it would rarely need more than
two connections and prove nothing; so, while the first table runs start, the test holds every
target table locked: each slice that starts must then wait with its connection open, and
Dagster's pool has to hold back the rest (we assert that it did: more work waited than the
limit allowed). pg_stat_activity, sampled every 50 ms, must never show more than two.

Screenshots go to test-artifacts/ui/ (asset graph, a table's partitions, its checks).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest
from psycopg import sql

from migration_assets.cli.ui import group_members, stop_process_group
from migration_assets.db.session import connect
from migration_assets.defs.checks import check_names
from migration_assets.defs.history import meta_text
from migration_assets.defs.keys import REPORT_KEY, VERIFY_JOB
from migration_assets.devstack.cluster import free_port
from migration_assets.devstack.shape import dagster_yaml
from migration_assets.devstack.stack import DevStack
from migration_assets.plan import MigrationPlan, save_plan
from migration_assets.planner import build_plan
from migration_assets.settings import SETTING_NAMES
from migration_assets_tests.browser import chromium_page
from migration_assets_tests.conftest import REPO_ROOT, Databases, unique
from migration_assets_tests.helpers import assert_equal_databases, latest_check_outcomes, run_cli
from migration_assets_tests.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ARTIFACTS = REPO_ROOT / "test-artifacts" / "ui"
LIMIT = 2  # MIGRATION_TARGET_CONNECTIONS for the backfill
DEFER_ABOVE = 500  # rows: the two biggest tables of the 300-patient clinic load index-free
POOL = "supabase_target"
LOCATION = "migration_assets"  # workspace.yaml's location_name
MIGRATION_APP = "migration_assets"  # application_name of every migration connection
TABLE = ("public", "patients")  # the table whose pages we read and whose slice we break
# Text that means the page is not what an operator should see.
ERROR_MARKERS = (
    "failed to load",
    "error occurred",
    "something went wrong",
    "could not load",
    "unexpected graphql error",
    "error loading",
    "code location failed",
)
SETTINGS = (*SETTING_NAMES, "DAGSTER_PG_PASSWORD")


# ------------------------------------------------------------------ the ui process


@dataclass
class UiProcess:
    """`migration-assets ui` in its own session, its output collected by a thread."""

    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, args: list[str], env: dict[str, str], cwd: Path) -> UiProcess:
        proc = subprocess.Popen(
            [sys.executable, "-m", "migration_assets.cli", "ui", *args],
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        started = cls(proc)
        threading.Thread(target=started._read, daemon=True).start()
        return started

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for_url(self, timeout: float = 240.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(r"Dagster UI: (http://\S+)", self.output)
            if match:
                return match.group(1)
            if self.proc.poll() is not None:
                break
            time.sleep(0.5)
        self.kill()
        pytest.fail(f"`migration-assets ui` did not serve:\n{self.output}")

    def stop(self, signum: int, timeout: float = 90.0) -> int:
        """What an operator does: Ctrl-C (SIGINT) or a supervisor's SIGTERM."""
        self.proc.send_signal(signum)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"`migration-assets ui` did not stop within {timeout:.0f}s:\n{self.output}")

    def kill(self) -> None:
        """For a failed test: SIGTERM (the command cleans up), then SIGKILL."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def processes_referencing(text: str) -> list[str]:
    """Live processes whose command line or environment mentions `text` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text()
            if stat.rsplit(")", 1)[-1].split()[0] == "Z":
                continue
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline or text.encode() in environ:
            found.append(f"{entry.name}: {cmdline.replace(b'\0', b' ')[:120].decode()}")
    return found


def wait_until_gone(text: str, timeout: float = 30.0) -> list[str]:
    """What still runs after `timeout`; that is killed, so no test leaves it behind."""
    with contextlib.suppress(AssertionError):
        wait_until(lambda: not processes_referencing(text), timeout, f"processes of {text}")
    left = processes_referencing(text)
    for entry in left:
        with contextlib.suppress(OSError):
            os.kill(int(entry.split(":", 1)[0]), signal.SIGKILL)
    return left


def graphql(url: str, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    """Reading results through Dagster's own API (launching is the page's job)."""
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(  # noqa: S310 - our own http URL
        f"{url}/graphql", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        payload: dict[str, Any] = json.loads(response.read())
    assert "errors" not in payload, payload
    data: dict[str, Any] = payload["data"]
    return data


# ------------------------------------------------------------------ the served migration


@dataclass
class Served:
    """The UI's migration; `env` is its settings, for a `migrate` of the same source."""

    url: str
    ui: UiProcess
    stack: DevStack
    plan: MigrationPlan
    target_url: str
    target_db: str
    dagster_db: str
    home: Path
    env: dict[str, str]

    @property
    def tables(self) -> list[tuple[str, str, int]]:
        return [(t.schema_name, t.name, t.slicing.partitions) for t in self.plan.tables]


def _small_plan(source_url: str, path: Path) -> MigrationPlan:
    """Several partitions per table (tables under 100 rows keep one)."""
    with connect(source_url, setting="SOURCE_DATABASE_URL") as conn:
        plan = build_plan(
            conn,
            source_dsn=source_url,
            rows_per_partition=1_000_000,
            min_partitions=3,
            split_above=100,
        )
    save_plan(plan, path)
    return plan


@pytest.fixture(scope="module")
def served(
    stack: DevStack, databases: Databases, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """A migration as an operator configures it, served by `migration-assets ui`."""
    assert stack.dagster is not None
    work = tmp_path_factory.mktemp("ui")
    source_url, target_db = databases.source(), unique("tgt_ui")
    target_url = stack.create_target_database(target_db)
    dagster_db = unique("dagster_ui")
    stack.dagster.admin(f'CREATE DATABASE "{dagster_db}" OWNER dagster')
    home = work / "dagster_home"
    home.mkdir()
    # The instance's own default is 4: the ui command must write the setting's 2 over it.
    (home / "dagster.yaml").write_text(
        dagster_yaml(port=stack.dagster.port, db=dagster_db, target_connections=4)
    )
    plan = _small_plan(source_url, work / "plan.json")
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    env.update(
        SOURCE_DATABASE_URL=source_url,
        SUPABASE_DB_URL=target_url,
        SUPABASE_SSLROOTCERT=str(stack.ca_file),
        MIGRATION_PLAN=str(work / "plan.json"),
        DAGSTER_HOME=str(home),
        DAGSTER_PG_PASSWORD=stack.passwords["dagster"],
        MIGRATION_TARGET_CONNECTIONS=str(LIMIT),
        MIGRATION_DEFER_INDEXES_ABOVE=str(DEFER_ABOVE),
    )
    ui = UiProcess.start(["--port", str(free_port())], env, work)
    try:
        url = ui.wait_for_url()
        yield Served(url, ui, stack, plan, target_url, target_db, dagster_db, home, env)
    finally:
        code = ui.stop(signal.SIGTERM) if ui.proc.poll() is None else ui.proc.returncode
        left = wait_until_gone(str(home))
        ui.kill()
    assert code == 0, ui.output
    assert not left, f"still running after SIGTERM: {left}"
    for secret in stack.passwords.values():
        assert secret not in ui.output, "a password was printed"


@pytest.fixture(scope="module")
def browser_page() -> Iterator[Any]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with chromium_page() as page:
        yield page


def assert_readable(page: Any) -> None:
    """No error banner, no failed code location: what a screenshot must not show."""
    text = page.inner_text("body").lower()
    shown = [marker for marker in ERROR_MARKERS if marker in text]
    assert not shown, f"the page shows {shown}"


def screenshot(page: Any, name: str) -> None:
    assert_readable(page)
    page.screenshot(path=str(ARTIFACTS / name))


# ------------------------------------------------------------------ sampling


@dataclass
class Sample:
    connections: int  # migration connections open on the target
    waiting_on_lock: int  # of those, how many wait for the test's table lock
    claimed: int  # pool slots claimed in Dagster's storage
    waiting: int  # steps waiting for a slot
    queued_runs: int

    @property
    def limit_binding(self) -> bool:
        """Both slots held by slices stuck with their connections open, more work waiting:
        without the pool, that work would have connected too."""
        return (
            self.claimed >= LIMIT
            and self.waiting_on_lock >= LIMIT
            and bool(self.waiting or self.queued_runs)
        )


@dataclass
class Sampler:
    """Every ~50 ms: the target's pg_stat_activity and the pool in Dagster's storage."""

    served: Served
    samples: list[Sample] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    error: list[BaseException] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        stack = self.served.stack
        assert stack.target is not None
        assert stack.dagster is not None
        try:
            with (
                psycopg.connect(
                    stack.target.admin_conninfo(self.served.target_db), autocommit=True
                ) as target,
                psycopg.connect(
                    stack.dagster.admin_conninfo(self.served.dagster_db), autocommit=True
                ) as dagster,
            ):
                while not self.stop.is_set():
                    self.samples.append(self._sample(target, dagster))
                    time.sleep(0.05)
        except BaseException as exc:  # reported by the test, not lost in a thread
            self.error.append(exc)

    def _sample(self, target: psycopg.Connection[Any], dagster: psycopg.Connection[Any]) -> Sample:
        conns = target.execute(
            "SELECT count(*), count(*) FILTER (WHERE wait_event_type = 'Lock') "
            "FROM pg_stat_activity WHERE datname = %s AND usename = 'postgres' "
            "AND application_name = %s",
            [self.served.target_db, MIGRATION_APP],
        ).fetchone()
        pool = dagster.execute(
            "SELECT (SELECT count(*) FROM concurrency_slots WHERE concurrency_key = %(p)s "
            "        AND run_id IS NOT NULL AND NOT deleted), "
            "       (SELECT count(*) FROM pending_steps WHERE concurrency_key = %(p)s "
            "        AND assigned_timestamp IS NULL), "
            "       (SELECT count(*) FROM runs WHERE status = 'QUEUED')",
            {"p": POOL},
        ).fetchone()
        assert conns is not None
        assert pool is not None
        return Sample(int(conns[0]), int(conns[1]), int(pool[0]), int(pool[1]), int(pool[2]))

    def limit_was_binding(self) -> bool:
        return any(s.limit_binding for s in self.samples[-40:])


def hold_target_tables(served: Served, sampler: Sampler, timeout: float = 150.0) -> float:
    """Lock every table once the schema run is over; release when the pool had to hold back
    work (or at `timeout`). Returns the seconds the lock was held."""
    stack = served.stack
    assert stack.target is not None
    _wait_for(lambda: _schema_run_finished(served.url), 120, "the schema step's run")
    names = sql.SQL(", ").join(sql.Identifier(s, t) for s, t, _ in served.tables)
    with psycopg.connect(stack.target.admin_conninfo(served.target_db)) as conn:
        conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(names))
        locked = time.monotonic()
        deadline = locked + timeout
        while not sampler.limit_was_binding() and time.monotonic() < deadline:
            time.sleep(0.2)
        # room for a connection the pool should not have allowed: counted in samples taken
        # while the pool held work back, not in seconds, so a busy machine waits longer
        binding = len(sampler.samples)
        while len(sampler.samples) < binding + 40 and time.monotonic() < deadline:
            time.sleep(0.05)
        conn.rollback()
    return time.monotonic() - locked


def _schema_run_finished(url: str) -> bool:
    runs = graphql(url, "{ runsOrError { ... on Runs { results { status } } } }")
    statuses = [r["status"] for r in runs["runsOrError"]["results"]]
    return "SUCCESS" in statuses and not {"STARTING", "STARTED"} & set(statuses)


def _wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    wait_until(condition, timeout, what, every=1.0)


# ------------------------------------------------------------------ the backfill


@dataclass
class Backfill:
    samples: list[Sample]
    seconds: float
    locked_seconds: float


PARTITION_STATS = """
{ assetNodes { assetKey { path }
    partitionStats { numMaterialized numFailed numPartitions } } }
"""


def _partition_stats(url: str) -> dict[tuple[str, ...], dict[str, int]]:
    nodes = graphql(url, PARTITION_STATS)["assetNodes"]
    return {tuple(n["assetKey"]["path"]): n["partitionStats"] for n in nodes if n["partitionStats"]}


def _all_partitions_in(served: Served) -> bool:
    stats = _partition_stats(served.url)
    failed = {k: v for k, v in stats.items() if v["numFailed"]}
    assert not failed, f"partitions failed during the backfill: {failed}"
    return all(stats.get((s, t), {}).get("numMaterialized") == n for s, t, n in served.tables)


def launch_backfill_from_the_graph(page: Any, url: str) -> None:
    """What an operator clicks: Materialize all, check the dialog, Launch backfill."""
    page.goto(f"{url}/asset-groups")
    page.get_by_role("button", name="Materialize all").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("All partitions").wait_for()
    assert "Launch runs to materialize" in dialog.inner_text()
    dialog.get_by_role("button", name="Launch backfill").click()
    dialog.wait_for(state="hidden")


@pytest.fixture(scope="module")
def backfill(browser_page: Any, served: Served) -> Backfill:
    page = browser_page
    sampler = Sampler(served)
    sampler.thread.start()
    started = time.monotonic()
    try:
        launch_backfill_from_the_graph(page, served.url)
        locked = hold_target_tables(served, sampler)
        _wait_for(lambda: _all_partitions_in(served), 600, "every partition to materialize")
    finally:
        sampler.stop.set()
        sampler.thread.join(timeout=10)
    assert not sampler.error, sampler.error
    return Backfill(sampler.samples, time.monotonic() - started, locked)


# ------------------------------------------------------------------ tests


def test_the_asset_graph_loads_with_every_group(browser_page: Any, served: Served) -> None:
    page = browser_page
    page.goto(f"{served.url}/locations")
    page.get_by_text("Loaded", exact=True).wait_for()
    assert_readable(page)
    page.goto(f"{served.url}/asset-groups")
    page.get_by_role("button", name="Materialize all").wait_for()
    groups = _groups(served)
    for group in sorted(groups):
        page.get_by_text(group, exact=True).first.wait_for()
    assert_readable(page)


def test_a_backfill_launched_from_the_ui_materializes_every_partition(
    served: Served, browser_page: Any, backfill: Backfill
) -> None:
    page = browser_page
    print(f"backfill: {backfill.seconds:.0f}s, tables locked {backfill.locked_seconds:.0f}s")
    page.goto(f"{served.url}/assets")
    for schema, name, partitions in served.tables:
        assert _catalog_status(page, f"{schema} / {name}", partitions) == {
            "partition_success": "All",
            "partition_missing": "0",
            "partition_failure": "0",
        }, f"{schema}.{name}"
    assert_readable(page)
    _assert_slice_checks_passed(served)
    _screenshot_partitions(page, served)


def _catalog_status(page: Any, asset: str, partitions: int) -> dict[str, str]:
    """The catalog's status cell of one asset: materialized (All), missing, failed."""
    row = page.locator("div[style*='grid-template-columns']").filter(
        has=page.get_by_text(asset, exact=True)
    )
    plural = "partition" if partitions == 1 else "partitions"
    row.get_by_text(f"{partitions} {plural}", exact=True).wait_for()
    return {
        label: row.locator(f"[aria-label={label}]").first.locator("xpath=..").inner_text().strip()
        for label in ("partition_success", "partition_missing", "partition_failure")
    }


def _assert_slice_checks_passed(served: Served) -> None:
    """Every partition's latest slice checks passed (read through Dagster's GraphQL)."""
    query = """query($key: AssetKeyInput!, $check: String!) {
      assetCheckExecutions(assetKey: $key, checkName: $check, limit: 200) {
        partition status timestamp } }"""
    for schema, name, partitions in served.tables:
        for check in ("slice_row_count", "slice_checksum"):
            runs = graphql(served.url, query, {"key": {"path": [schema, name]}, "check": check})[
                "assetCheckExecutions"
            ]
            latest: dict[str, str] = {}
            for execution in sorted(runs, key=lambda e: e["timestamp"]):
                latest[execution["partition"]] = execution["status"]
            assert len(latest) == partitions, (schema, name, check, latest)
            assert set(latest.values()) == {"SUCCEEDED"}, (schema, name, check, latest)


def _screenshot_partitions(page: Any, served: Served) -> None:
    partitions = next(n for s, t, n in served.tables if (s, t) == TABLE)
    page.goto(f"{served.url}/assets/{TABLE[0]}/{TABLE[1]}?view=partitions")
    page.get_by_text(f"Materialized ({partitions})").wait_for()
    text = page.inner_text("body")
    assert "Failed (0)" in text
    assert "Missing (0)" in text
    page.get_by_text(re.compile(r"^001-[0-9a-f]{8}$")).first.click()
    page.get_by_text("rows_per_second").first.wait_for()
    screenshot(page, "partitions.png")


def test_a_backfill_never_opens_more_connections_than_the_limit(
    served: Served, backfill: Backfill
) -> None:
    pools = graphql(served.url, "{ instance { concurrencyLimits { concurrencyKey slotCount } } }")
    # The instance's dagster.yaml said 4; MIGRATION_TARGET_CONNECTIONS won.
    assert {"concurrencyKey": POOL, "slotCount": LIMIT} in pools["instance"]["concurrencyLimits"]
    samples = backfill.samples
    assert len(samples) > 100, "the sampler barely ran"
    peak = max(s.connections for s in samples)
    print(f"{len(samples)} samples; peak {peak} migration connections (limit {LIMIT})")
    assert peak <= LIMIT, [s for s in samples if s.connections > LIMIT][:5]
    assert max(s.claimed for s in samples) <= LIMIT
    # Not vacuous: at some moment the pool had to hold work back.
    assert any(s.limit_binding for s in samples), "the limit never mattered: nothing proved"


def test_a_ui_backfill_and_migrate_end_in_the_same_state(
    served: Served, backfill: Backfill, isolated_cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The UI's "Materialize all" and `migrate` on another cold target, same source and
    settings: equal rows, indexes (all valid), sequences, check outcomes; both deferred."""
    _wait_for(lambda: _backfill_status(served.url) in DONE, 180, "the backfill to complete")
    assert _backfill_status(served.url) == "COMPLETED_SUCCESS"
    cli_home = isolated_cwd / "cli_home"
    cli_home.mkdir()
    cli_target = served.stack.create_target_database(unique("tgt_cli"))
    for name in SETTINGS:
        if name in served.env:
            monkeypatch.setenv(name, served.env[name])
    monkeypatch.setenv("SUPABASE_DB_URL", cli_target)
    monkeypatch.setenv("DAGSTER_HOME", str(cli_home))
    code, output = run_cli(["migrate", "--workers", "2"])
    assert code == 0, output

    source = served.env["SOURCE_DATABASE_URL"]
    assert assert_equal_databases(source, served.target_url) == assert_equal_databases(
        source, cli_target
    )
    ui_indexes, cli_indexes = _indexes(served.target_url), _indexes(cli_target)
    assert ui_indexes == cli_indexes
    assert all(valid for _, valid in ui_indexes.values()), ui_indexes
    assert _sequences(served.target_url) == _sequences(cli_target)
    ui_instance = dg.DagsterInstance.from_config(str(served.home))
    cli_instance = dg.DagsterInstance.from_config(str(cli_home))
    ui_checks, cli_checks = _check_outcomes(ui_instance), _check_outcomes(cli_instance)
    # the backfill's run of the one-slice tables copied each of them whole, so their
    # whole-table checks ran there (and passed); `migrate` leaves them all to `verify`
    one_slice = [t for t in served.plan.tables if t.slicing.partitions == 1]
    assert one_slice, "the plan has one-slice tables"
    assert len(one_slice) < len(served.plan.tables), "and split ones"
    judged = {
        f"{'/'.join(t.asset_path)} {name}"
        for t in one_slice
        for name in check_names(t, served.plan)
    }
    assert {k: v for k, v in ui_checks.items() if k not in cli_checks} == dict.fromkeys(
        judged, True
    )
    assert {k: v for k, v in ui_checks.items() if k in cli_checks} == cli_checks
    assert len(ui_checks) > 20, ui_checks
    # no pooler is configured for this UI (pooler_ready is a WARN), and "Materialize all"
    # leaves the split tables' whole-table checks to the Checks tab, so the report says it
    # is incomplete
    failed = {name for name, passed in ui_checks.items() if not passed}
    assert failed == {
        "supabase_sequences pooler_ready",
        "migration_audit_report report_complete",
    }, ui_checks
    deferred = [_indexes_rebuilt(i) for i in (ui_instance, cli_instance)]
    assert deferred[0] == deferred[1] > 0, f"rebuilt after the load: ui, cli = {deferred}"


RUNS_OF_JOB = """
query ($job: String!) { runsOrError(filter: { pipelineName: $job }) {
  ... on Runs { results { status } } } }
"""


def _runs_of(url: str, job: str) -> list[str]:
    runs = graphql(url, RUNS_OF_JOB, {"job": job})["runsOrError"]["results"]
    return [str(r["status"]) for r in runs]


def test_one_click_after_the_backfill_ends_the_migration_verified(
    served: Served, browser_page: Any, backfill: Backfill, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dagster cannot run a table's whole-table checks after its last slice inside one
    backfill: the asset pages name the job that does, and one click of it ends the migration
    with every check run and the audit report COMPLETE."""
    _wait_for(lambda: _backfill_status(served.url) in DONE, 180, "the backfill to complete")
    page = browser_page
    page.goto(f"{served.url}/assets/{TABLE[0]}/{TABLE[1]}")
    page.get_by_text(f"launch the job {VERIFY_JOB}", exact=False).first.wait_for()
    page.goto(f"{served.url}/locations/{LOCATION}/jobs/{VERIFY_JOB}/playground")
    page.get_by_role("button", name="Launch run").click()
    _wait_for(
        lambda: (
            bool(_runs_of(served.url, VERIFY_JOB))
            and set(_runs_of(served.url, VERIFY_JOB)) <= {"SUCCESS", "FAILURE", "CANCELED"}
        ),
        240,
        f"the {VERIFY_JOB} run to end",
    )
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", served.env["DAGSTER_PG_PASSWORD"])
    instance = dg.DagsterInstance.from_config(str(served.home))
    assert _runs_of(served.url, VERIFY_JOB) == ["SUCCESS"], _failures_of(instance, VERIFY_JOB)
    screenshot(page, "verified.png")
    checks = latest_check_outcomes(instance)
    assert checks["migration_audit_report report_complete"], checks
    table_checks = {n for n in checks if n.startswith("public/patients table_")}
    assert table_checks == {"public/patients table_row_count", "public/patients table_checksum"}
    assert all(checks[n] for n in table_checks), checks
    report = instance.get_latest_materialization_event(REPORT_KEY)
    assert report is not None
    assert report.asset_materialization is not None
    assert meta_text(report.asset_materialization.metadata, "complete") == "True"


def _indexes(url: str) -> dict[str, tuple[str, bool]]:
    """Every index of the migrated schemas: its definition and whether it is valid."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT n.nspname || '.' || c.relname, pg_get_indexdef(i.indexrelid), i.indisvalid "
            "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname IN ('public', 'reference')"
        ).fetchall()
    return {str(name): (str(definition), bool(valid)) for name, definition, valid in rows}


def _sequences(url: str) -> dict[str, int | None]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT schemaname || '.' || sequencename, last_value FROM pg_sequences "
            "WHERE schemaname IN ('public', 'reference')"
        ).fetchall()
    assert rows, "the clinic schema has sequences"
    return {str(name): value for name, value in rows}


def _failures_of(instance: dg.DagsterInstance, job: str) -> list[str]:
    """What the job's steps failed with (their messages hold no row values)."""
    said = []
    for record in instance.get_run_records(filters=dg.RunsFilter(job_name=job)):
        for event in instance.all_logs(record.dagster_run.run_id):
            if event.dagster_event is not None and event.dagster_event.is_step_failure:
                data: Any = event.dagster_event.event_specific_data
                user = data.user_failure_data
                said.append(user.description if user else data.error.message)
            elif event.user_message and "not written" in event.user_message:
                said.append(event.user_message)
    return said


def _check_outcomes(instance: dg.DagsterInstance) -> dict[str, bool]:
    """Each check's latest result, by asset and check name (partitions pooled: all must
    pass for True)."""
    outcomes: dict[str, bool] = {}
    for record in instance.get_run_records():
        for event in instance.all_logs(
            record.dagster_run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
        ):
            assert event.dagster_event is not None
            evaluation: Any = event.dagster_event.event_specific_data
            key = f"{evaluation.asset_key.to_user_string()} {evaluation.check_name}"
            outcomes[key] = outcomes.get(key, True) and bool(evaluation.passed)
    return outcomes


def _indexes_rebuilt(instance: dg.DagsterInstance) -> int:
    record = instance.get_latest_materialization_event(dg.AssetKey("supabase_indexes"))
    assert record is not None
    assert record.asset_materialization is not None
    rebuilt: Any = record.asset_materialization.metadata["indexes_rebuilt"]
    return int(rebuilt.value)


RUNNING = {"In Progress", "Queued", "Running"}
# In the checks tab's list each check is a titled name followed by its status.
CHECK_NAMES = "(spans) => spans.map((s) => s.previousElementSibling.getAttribute('title'))"


def _check_status(page: Any, check: str) -> str:
    """The status shown under a check's name in the checks tab's list."""
    status: str = page.locator(f'div[title="{check}"] + span').first.inner_text()
    return status.strip()


def _run_checks_and_wait(page: Any, button: Any, checks: list[str]) -> dict[str, str]:
    """Click, see the checks start (the page says so at once), then wait for their results."""
    button.click()
    statuses = {c: _check_status(page, c) for c in checks}
    deadline = time.monotonic() + 30
    while not RUNNING & set(statuses.values()):
        if time.monotonic() > deadline:
            pytest.fail(f"the checks did not start: {statuses}")
        page.wait_for_timeout(250)
        statuses = {c: _check_status(page, c) for c in checks}
    deadline = time.monotonic() + 150
    while RUNNING & set(statuses.values()):
        if time.monotonic() > deadline:
            pytest.fail(f"the checks did not finish: {statuses}")
        page.wait_for_timeout(1000)
        statuses = {c: _check_status(page, c) for c in checks}
    return statuses


def test_checks_pass_then_a_broken_slice_fails_table_checksum(
    served: Served, browser_page: Any, backfill: Backfill
) -> None:
    page = browser_page
    page.goto(f"{served.url}/assets/{TABLE[0]}/{TABLE[1]}?view=checks")
    page.get_by_text("table_checksum", exact=True).first.wait_for()
    listed = re.search(r"Checks \((\d+)\)", page.inner_text("body"))
    assert listed, page.inner_text("body")
    checks = sorted(set(page.locator("div[title] + span").evaluate_all(CHECK_NAMES)))
    assert {"table_checksum", "slice_checksum", "slice_row_count"} <= set(checks), checks
    assert len(checks) == int(listed.group(1)), checks
    before_break = _run_checks_and_wait(
        page, page.get_by_role("button", name="Execute all"), checks
    )
    assert set(before_break.values()) == {"Succeeded"}, before_break
    screenshot(page, "checks.png")

    _break_one_row(served)
    page.get_by_text("table_checksum", exact=True).first.click()
    page.get_by_text("Latest execution").first.wait_for()
    execute = page.locator("button").filter(has_text=re.compile(r"^\s*Execute\s*$"))
    after = _run_checks_and_wait(page, execute, ["table_checksum"])
    assert after == {"table_checksum": "Failed"}, after
    assert _check_status(page, "table_row_count") == "Succeeded"  # same count, other bytes
    # The check names the slice: the edited row has the smallest key, so slice 000.
    page.get_by_text("differing_slices").first.wait_for()
    assert re.search(r"differing_slices\s+000\b", page.inner_text("body"))
    screenshot(page, "checks-failed.png")


def _break_one_row(served: Served) -> None:
    """One row edited behind the migration's back, as the target's `postgres` role."""
    with psycopg.connect(served.target_url) as conn:
        updated = conn.execute(
            "UPDATE public.patients SET given_name = given_name || ' (edited)' "
            "WHERE id = (SELECT id FROM public.patients ORDER BY id LIMIT 1)"
        ).rowcount
        conn.commit()
    assert updated == 1


BACKFILLS = "{ partitionBackfillsOrError { ... on PartitionBackfills { results { status } } } }"
DONE = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}


def _wait_for_text(page: Any, condition: Callable[[str], bool], timeout: float = 120.0) -> str:
    """The page's text once `condition` holds on it (or at `timeout`, for the assertion)."""
    deadline = time.monotonic() + timeout
    text: str = page.inner_text("body")
    while not condition(text) and time.monotonic() < deadline:
        page.wait_for_timeout(250)
        text = page.inner_text("body")
    return text


def _groups(served: Served) -> set[str]:
    """The asset groups the code location shows: the graph's, and the cutover's evidence."""
    return {"schema", "finish", "audit", "cutover"} | {f"tables_{s}" for s, _, _ in served.tables}


def _filled(count: int) -> Callable[[str], bool]:
    """The page draws at least `count` full partition bars."""
    return lambda text: text.count("100% filled") >= count


def _backfill_status(url: str) -> str:
    results = graphql(url, BACKFILLS)["partitionBackfillsOrError"]["results"]
    assert len(results) == 1, results
    return str(results[0]["status"])


def test_the_backfill_completes_and_the_asset_graph_shows_it(
    served: Served, browser_page: Any, backfill: Backfill
) -> None:
    """Sequences and the audit report follow the tables; then the whole graph is drawn."""
    _wait_for(lambda: _backfill_status(served.url) in DONE, 180, "the backfill to complete")
    assert _backfill_status(served.url) == "COMPLETED_SUCCESS"
    page = browser_page
    page.set_viewport_size({"width": 1600, "height": 2000})  # tall enough to draw every asset
    try:
        expanded = ",".join(f"global@global:{group}" for group in sorted(_groups(served)))
        page.goto(f"{served.url}/asset-groups?expanded={urllib.parse.quote(expanded)}")
        page.get_by_role("button", name="Materialize all").wait_for()
        names = [table for _, table, _ in served.tables]
        names += ["supabase_schema", "supabase_indexes", "supabase_sequences"]
        text = _wait_for_text(page, lambda t: all(n in t for n in names))
        assert all(n in text for n in names), text
        screenshot(page, "asset-graph.png")
        # Zoomed out to fit every group, the lineage draws names only; a group's own page
        # draws each node in full, partition bar included.
        for schema in sorted({schema for schema, _, _ in served.tables}):
            drawn = sum(1 for s, _, _ in served.tables if s == schema)
            page.goto(f"{served.url}/locations/{LOCATION}/asset-groups/tables_{schema}")
            text = _wait_for_text(page, _filled(drawn))
            assert text.count("100% filled") == drawn, text
            screenshot(page, f"asset-group-{schema}.png")
    finally:
        page.set_viewport_size({"width": 1600, "height": 1000})


# ------------------------------------------------------------------ demo mode


def test_ui_demo_mode_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS}
    env["MIGRATION_TARGET_CONNECTIONS"] = "3"
    port = free_port()
    ui = UiProcess.start(["--demo", "--patients", "50", "--port", str(port)], env, tmp_path)
    try:
        url = ui.wait_for_url()
        home = re.search(r"DAGSTER_HOME\s*│\s*(\S+)", ui.output)
        assert home, ui.output
        root = Path(home.group(1)).parent
        pools = graphql(url, "{ instance { concurrencyLimits { concurrencyKey slotCount } } }")[
            "instance"
        ]["concurrencyLimits"]
        assert {"concurrencyKey": POOL, "slotCount": 3} in pools
        secrets = (root / "stack.env").read_text()
        assert processes_referencing(str(root)), "nothing of the stack was found running"
        code = ui.stop(signal.SIGINT)
    finally:
        ui.kill()
    assert code == 0, ui.output
    for line in secrets.splitlines():
        if "PASSWORD" in line:
            assert line.split("=", 1)[1].strip("'") not in ui.output
    assert "***" in ui.output  # connection strings are shown, masked
    assert not wait_until_gone(str(root)), "left running after Ctrl-C"
    assert not root.exists()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{url}/server_info", timeout=2)  # noqa: S310


# ------------------------------------------------------------------ refusals, stopping


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"SOURCE_DATABASE_URL": "postgresql://u@127.0.0.1:5/db"}, "SUPABASE_DB_URL"),
        ({"MIGRATION_TARGET_CONNECTIONS": "0"}, "MIGRATION_TARGET_CONNECTIONS"),
    ],
)
def test_ui_refuses_settings_it_cannot_serve(
    isolated_cwd: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    """Half a configuration is a mistake to name, not a reason to serve a demo instead."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code, output = run_cli(["ui", "--port", str(free_port())])
    assert code == 2
    assert expected in output


def test_ui_refuses_a_port_in_use(isolated_cwd: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code, output = run_cli(["ui", "--demo", "--port", str(busy.getsockname()[1])])
    assert code == 2
    assert "in use" in output
    assert "starting a throwaway stack" not in output  # refused before starting anything


def test_a_process_group_that_ignores_sigterm_is_killed() -> None:
    """What `ui` does to dagster dev when it does not stop in time."""
    stubborn = (
        "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", stubborn], start_new_session=True)
    deadline = time.monotonic() + 10
    while len(group_members(proc.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(group_members(proc.pid)) == 2
    started = time.monotonic()
    assert stop_process_group(proc, timeout=1.0) == 2
    assert time.monotonic() - started < 10
    assert group_members(proc.pid) == []
