"""The deployment's paths beside the local one: the same small database, the same servers.

`migrate` executes the graph in its own processes. `migrate --submit` launches the same
runs through the webserver's GraphQL API, each as soon as the runs before it have ended,
for the instance's run queue and launcher to execute. The UI's "Materialize all" does what
its dialog does for this graph: every table is one slice, so all share one partition key and
the dialog launches one run of the whole graph ("Launch 1 run", the same `launchRun`
mutation); a graph with split tables gets an asset backfill instead, which Dagster's backfill
daemon launches a level at a time, looking for work every 30 s (`--backfill` measures that
too). Last, one table's partition again (its rows deleted on the target first), as the
table's page launches it ("Launch 1 run"), then the job `verify_and_report`. On the small
database of `run.py` (14 tables, about 3,400 rows) fixed costs are all there is, so this
measures what a user waits for on each path, each as a ratio to local `migrate` measured in
the same run:

    .venv/bin/python benchmarks/daemon_path.py [--repeats 1] [--backfill]

Each repeat gets a fresh empty target and a fresh DAGSTER_HOME on the stack's Dagster
server (PostgreSQL storage, the queued run coordinator with the target pool, as
`deploy/dagster.yaml`), and for the deployment's paths a `dagster-daemon run` and a
`dagster-webserver` started beforehand (off the clock: production keeps them up). The clock
runs from the request (the command's start, or the GraphQL mutation) to its end; every
path must end with every table's rows equal to the source's, and the UI's with the audit
report COMPLETE.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` as a package

import dagster as dg
import psycopg
from psycopg import sql

from benchmarks.run import (
    Bench,
    BenchmarkError,
    _cli_checked,
    check_counts,
    cli_env,
    fresh_dagster_home,
    fresh_target,
    prepare_small,
)
from migration_assets.defs.checks import PARTITION_TAG
from migration_assets.defs.history import meta_text
from migration_assets.defs.keys import REPORT_KEY, VERIFY_JOB
from migration_assets.defs.shipped import shipped_file
from migration_assets.devstack.cluster import LOOPBACK, free_port
from migration_assets.devstack.stack import DevStack
from migration_assets.engine.submit import ASSET_JOB, LAUNCH, LOCATION, Webserver
from migration_assets.engine.work import HEAD, TAIL

DAEMON_START_SECONDS = 180


@contextlib.contextmanager
def service(bench: Bench, env: dict[str, str], name: str, args: list[str]) -> Iterator[None]:
    """A Dagster process on the shipped workspace, in its own session, stopped after."""
    log = (bench.work / f"{bench.name(name)}.log").open("w")
    proc = subprocess.Popen(
        [*args, "-w", str(shipped_file("workspace.yaml"))],
        env=env,
        cwd=bench.work,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()


@contextlib.contextmanager
def deployment(bench: Bench, env: dict[str, str]) -> Iterator[Webserver]:
    """A daemon and a webserver on the instance of `env`, beating and serving the code
    location before it yields; `env` gains MIGRATION_WEBSERVER_URL."""

    port = free_port()
    env["MIGRATION_WEBSERVER_URL"] = f"http://{LOOPBACK}:{port}"
    web = Webserver(env["MIGRATION_WEBSERVER_URL"])
    bin_dir = Path(sys.executable).parent
    with (
        service(bench, env, "daemon", [str(bin_dir / "dagster-daemon"), "run"]),
        service(bench, env, "webserver", [str(bin_dir / "dagster-webserver"), "-p", str(port)]),
        dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance,
    ):
        deadline = time.monotonic() + DAEMON_START_SECONDS
        while "QUEUED_RUN_COORDINATOR" not in instance.get_daemon_heartbeats() or not web.serving():
            if time.monotonic() > deadline:
                raise BenchmarkError(f"the deployment did not start; see the logs in {bench.work}")
            time.sleep(0.5)
        yield web


LAUNCH_BACKFILL = """
mutation Launch($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on Error { message } } }
"""
BACKFILL = """
query B($id: String!) { partitionBackfillOrError(backfillId: $id) {
  ... on PartitionBackfill { status } } }
"""
BACKFILL_ENDED = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}


CHECKS = """
query Checks($keys: [AssetKeyInput!]) { assetNodes(assetKeys: $keys) {
  assetKey { path } assetChecksOrError { ... on AssetChecks { checks { name } } } } }
"""
RUNS_ENDED = {"SUCCESS", "FAILURE", "CANCELED"}
RUN = """
query R($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }
"""


def graph_keys(bench: Bench) -> list[dg.AssetKey]:
    return [*HEAD, *(dg.AssetKey(t.asset_path) for t in bench.tables), *TAIL]


def launch(web: Webserver, selector: dict[str, Any], tags: dict[str, str]) -> str:
    """`launchRun`, as the UI's Launchpad and dialog send it; the new run's id."""
    selector = {"repositoryLocationName": LOCATION, "repositoryName": web.repository(), **selector}
    params = {
        "selector": selector,
        "runConfigData": {},
        "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]},
    }
    launched = web.query(LAUNCH, {"params": params})["launchRun"]
    if launched["__typename"] != "LaunchRunSuccess":
        raise BenchmarkError(f"{selector['jobName']}: the run was refused: {launched}")
    return str(launched["run"]["runId"])


def launch_one_run(web: Webserver, keys: list[dg.AssetKey], partition: str) -> str:
    """What the UI's dialog sends for "Launch 1 run": the asset job, the assets and every
    check of theirs, the partition as a tag."""
    paths = [{"path": list(key.path)} for key in keys]
    nodes = web.query(CHECKS, {"keys": paths})["assetNodes"]
    checks = [
        {"assetKey": node["assetKey"], "name": check["name"]}
        for node in nodes
        for check in node["assetChecksOrError"].get("checks", [])
    ]
    selector = {"jobName": ASSET_JOB, "assetSelection": paths, "assetCheckSelection": checks}
    return launch(web, selector, {PARTITION_TAG: partition})


def wait_for_run(web: Webserver, run_id: str) -> None:
    while (status := web.query(RUN, {"id": run_id})["runOrError"]["status"]) not in RUNS_ENDED:
        time.sleep(0.5)
    if status != "SUCCESS":
        raise BenchmarkError(f"the run {run_id} ended {status}")


def materialize_all(web: Webserver, bench: Bench) -> float:
    """The UI's "Materialize all" on this graph: one run, every table's one slice; seconds
    from the request until the run ended."""
    (key,) = {k for t in bench.tables for k in t.partition_keys}  # what the dialog offers
    started = time.perf_counter()
    wait_for_run(web, launch_one_run(web, graph_keys(bench), key))
    return time.perf_counter() - started


def backfill_all(web: Webserver, bench: Bench) -> float:
    """What "Materialize all" makes of a graph with split tables: an asset backfill of every
    asset and partition, through the same GraphQL API; seconds until it ended."""
    started = time.perf_counter()
    keys = [{"path": list(key.path)} for key in graph_keys(bench)]
    params = {"assetSelection": keys, "allPartitions": True, "title": "benchmark"}
    launched = web.query(LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
    if launched["__typename"] != "LaunchBackfillSuccess":
        raise BenchmarkError(f"the backfill was refused: {launched}")
    while True:
        found = web.query(BACKFILL, {"id": launched["backfillId"]})["partitionBackfillOrError"]
        if found["status"] in BACKFILL_ENDED:
            break
        time.sleep(0.5)
    if found["status"] != "COMPLETED_SUCCESS":
        raise BenchmarkError(f"the backfill ended {found['status']}")
    return time.perf_counter() - started


def one_partition_again(web: Webserver, bench: Bench, target_url: str) -> float:
    """A slice gone wrong on the target (its rows deleted), launched again from its table's
    page (one partition: "Launch 1 run"), then `verify_and_report`, as an operator would:
    seconds from the first request until the report is written."""
    referenced = {fk.ref_qualified for t in bench.tables for fk in t.foreign_keys}
    leaves = [t for t in bench.tables if t.qualified not in referenced]  # deletable
    table = max(leaves, key=lambda t: bench.source_counts[t.qualified])
    with psycopg.connect(target_url, sslrootcert=str(bench.stack.ca_file)) as conn:
        conn.execute(
            sql.SQL("DELETE FROM {}").format(sql.Identifier(table.schema_name, table.name))
        )
    started = time.perf_counter()
    (key,) = table.partition_keys
    wait_for_run(web, launch_one_run(web, [dg.AssetKey(table.asset_path)], key))
    wait_for_run(web, launch(web, {"jobName": VERIFY_JOB}, {}))
    return time.perf_counter() - started


def report_complete(home: Path) -> bool:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        event = instance.get_latest_materialization_event(REPORT_KEY)
    return bool(
        event
        and event.asset_materialization
        and meta_text(event.asset_materialization.metadata, "complete") == "True"
    )


def timed(bench: Bench, args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    _cli_checked(bench, args, env)
    return time.perf_counter() - started


PATHS = {
    "local": "local `migrate`",
    "submit": "`migrate --submit` (webserver, run queue, a process per run)",
    "ui": 'UI "Materialize all" (one run of the graph, run queue)',
    "again": "one partition again from its table's page, then `verify_and_report`",
    "backfill": "the same graph as an asset backfill (what the UI makes of split tables)",
}


def measure(bench: Bench, repeats: int, backfill: bool) -> dict[str, list[float]]:
    small = prepare_small(bench)
    seconds: dict[str, list[float]] = {path: [] for path in PATHS}
    for _ in range(repeats):
        with fresh_target(small) as url, fresh_dagster_home(small) as home:
            seconds["local"].append(timed(small, ["migrate"], cli_env(small, url, home)))
            check_counts(small, url, "local migrate")
        with fresh_target(small) as url, fresh_dagster_home(small) as home:
            env = cli_env(small, url, home)
            with deployment(small, env):
                seconds["submit"].append(timed(small, ["migrate", "--submit"], env))
            check_counts(small, url, "migrate --submit")
        with fresh_target(small) as url, fresh_dagster_home(small) as home:
            with deployment(small, cli_env(small, url, home)) as web:
                seconds["ui"].append(materialize_all(web, small))
                check_counts(small, url, "UI Materialize all")
                if not report_complete(home):
                    raise BenchmarkError("UI Materialize all: the audit report is not COMPLETE")
                seconds["again"].append(one_partition_again(web, small, url))
            check_counts(small, url, "one partition again")
            if not report_complete(home):
                raise BenchmarkError("one partition again: the audit report is not COMPLETE")
        if backfill:
            with fresh_target(small) as url, fresh_dagster_home(small) as home:
                with deployment(small, cli_env(small, url, home)) as web:
                    seconds["backfill"].append(backfill_all(web, small))
                check_counts(small, url, "UI backfill")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--backfill", action="store_true", help="also the asset backfill (about 2 minutes)"
    )
    args = parser.parse_args()
    os.environ["DAGSTER_DISABLE_TELEMETRY"] = "1"
    with DevStack(pooler=False) as stack, tempfile.TemporaryDirectory() as work:
        os.environ["DAGSTER_PG_PASSWORD"] = stack.passwords["dagster"]  # for our own reads
        bench = Bench(
            stack=stack, work=Path(work), workers=args.workers, dagster_storage="postgres"
        )
        seconds = measure(bench, args.repeats, args.backfill)
    local = statistics.median(seconds["local"])
    print("| path | seconds (median) | ratio to local migrate |")
    print("|---|---:|---:|")
    measured = [path for path in PATHS if seconds[path]]
    for path in measured:
        median = statistics.median(seconds[path])
        print(f"| {PATHS[path]} | {median:.1f} | {median / local:.2f}x |")
    print("runs: " + ", ".join(f"{p} {[round(s, 1) for s in seconds[p]]}" for p in measured))
    return 0


if __name__ == "__main__":
    sys.exit(main())
