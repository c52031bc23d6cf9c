"""The deployment's paths beside the local one: the same small database, the same servers.

`migrate` executes the graph in its own processes. `migrate --submit` launches the same
runs through the webserver's GraphQL API, each as soon as the runs before it have ended,
for the instance's run queue and launcher to execute. The UI's "Materialize all" makes an
asset backfill of the same runs, which Dagster's backfill daemon launches a level of the
graph at a time, looking for work every 30 s. On the small database of `run.py` (14 tables,
about 3,400 rows) fixed costs are all there is, so this measures what a user waits for on
each path, each as a ratio to local `migrate` measured in the same run:

    .venv/bin/python benchmarks/daemon_path.py [--repeats 1]

Each repeat gets a fresh empty target and a fresh DAGSTER_HOME on the stack's Dagster
server (PostgreSQL storage, the queued run coordinator with the target pool, as
`deploy/dagster.yaml`), and for the deployment's paths a `dagster-daemon run` and a
`dagster-webserver` started beforehand (off the clock: production keeps them up). The clock
runs from the request (the command's start, or the GraphQL mutation) to its end; every
path must end with every table's rows equal to the source's.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `benchmarks` as a package

import dagster as dg

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
from migration_assets.defs.shipped import shipped_file
from migration_assets.devstack.cluster import LOOPBACK, free_port
from migration_assets.devstack.stack import DevStack
from migration_assets.engine.submit import Webserver
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


def materialize_all(web: Webserver, bench: Bench) -> float:
    """What the UI's "Materialize all" does to the migration's graph (every asset, every
    partition, as one backfill), through the same GraphQL API; seconds from the request
    until the backfill ended."""
    started = time.perf_counter()
    graph = [*HEAD, *(dg.AssetKey(t.asset_path) for t in bench.tables), *TAIL]
    keys = [{"path": list(key.path)} for key in graph]
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


def timed(bench: Bench, args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    _cli_checked(bench, args, env)
    return time.perf_counter() - started


PATHS = {
    "local": "local `migrate`",
    "submit": "`migrate --submit` (webserver, run queue, a process per run)",
    "ui": 'UI "Materialize all" (asset backfill, backfill daemon)',
}


def measure(bench: Bench, repeats: int) -> dict[str, list[float]]:
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
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    os.environ["DAGSTER_DISABLE_TELEMETRY"] = "1"
    with DevStack(pooler=False) as stack, tempfile.TemporaryDirectory() as work:
        os.environ["DAGSTER_PG_PASSWORD"] = stack.passwords["dagster"]  # for our own reads
        bench = Bench(
            stack=stack, work=Path(work), workers=args.workers, dagster_storage="postgres"
        )
        seconds = measure(bench, args.repeats)
    local = statistics.median(seconds["local"])
    print("| path | seconds (median) | ratio to local migrate |")
    print("|---|---:|---:|")
    for path, label in PATHS.items():
        median = statistics.median(seconds[path])
        print(f"| {label} | {median:.1f} | {median / local:.2f}x |")
    print("runs: " + ", ".join(f"{p} {seconds[p]}" for p in PATHS))
    return 0


if __name__ == "__main__":
    sys.exit(main())
