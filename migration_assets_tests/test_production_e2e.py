"""The production topology of README "Past one machine", without containers.

Dagster's storage is configured by `deploy/dagster.yaml` itself (copied unchanged into a
fresh DAGSTER_HOME, its `DAGSTER_PG_*` variables pointed at a fresh database on the
devstack's storage server). Three processes, each in its own session, as compose runs three
containers: `dagster code-server start` serving `migration_assets.definitions` on a port, and
`dagster-webserver` and `dagster-daemon run`, both reaching the code only through a workspace
file with `grpc_server:`. Only the code server gets the migration's settings (URLs, plan,
CA): the webserver and the daemon get the storage's, so a run worker that needed them from
the daemon would fail here as it would in a container. The backfill is launched and followed
through the webserver's GraphQL API, as the UI does; the data is compared independently.

Every table of the test's database is one slice (the default sizing), so the UI's "Materialize
all" offers one run of the whole graph: the test clicks that in a browser first, and the run
ends verified (every whole-table check passed, the report COMPLETE). Then the backfill a
user gets when the tables are split, launched through GraphQL: the daemon's backfill loop
looks for work every 30 s and launches one level of the graph per look, so it takes minutes;
the test prints where the time went.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from migration_assets.cli.ui import group_members, stop_process_group
from migration_assets.defs.checks import check_names
from migration_assets.defs.history import meta_text
from migration_assets.defs.keys import REPORT_KEY
from migration_assets.devstack.cluster import LOOPBACK, free_port
from migration_assets.devstack.stack import DevStack
from migration_assets.engine.work import HEAD, TAIL
from migration_assets.plan import MigrationPlan, load_plan
from migration_assets_tests.browser import chromium_page, materialize_all_in_one_run
from migration_assets_tests.conftest import REPO_ROOT, Migration, MigrationFactory, unique
from migration_assets_tests.helpers import assert_equal_databases, latest_check_outcomes, run_cli
from migration_assets_tests.waiting import port_closed, process_gone, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DEPLOY_YAML = REPO_ROOT / "deploy" / "dagster.yaml"
BIN = Path(sys.executable).parent
LOCATION = "migration_assets"
BACKFILL_TIMEOUT = 900.0  # measured 2-4 minutes on this 2-core machine; a loaded one is slower
START_TIMEOUT = 240.0
DONE = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}
RUN_DONE = {"SUCCESS", "FAILURE", "CANCELED"}
# What a process needs besides the settings we give it; coverage follows it when measuring.
PASSED_THROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR")


@dataclass
class Service:
    """One long-running Dagster process in its own session, its output in a file."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    port: int

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def alive(self) -> bool:
        return self.proc.poll() is None


def _base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k in PASSED_THROUGH}
    env.update({k: v for k, v in os.environ.items() if k.startswith("COVERAGE_")})
    return env


@contextmanager
def _service(
    name: str, args: list[str], env: dict[str, str], cwd: Path, port: int
) -> Iterator[Service]:
    """Start `args`; on the way out stop its whole group and wait until every member is gone."""
    log = cwd / f"{name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            args, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    service = Service(name, proc, log, port)
    try:
        yield service
    finally:
        stop_process_group(proc)
        process_gone(proc)
        wait_until(lambda: not group_members(proc.pid), 60, f"every process of the {name}")
        if port:
            port_closed(port)


def graphql(url: str, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(  # noqa: S310 - our own loopback URL
        f"{url}/graphql", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
        payload: dict[str, Any] = json.loads(response.read())
    assert "errors" not in payload, payload
    data: dict[str, Any] = payload["data"]
    return data


WORKSPACE = """\
{ workspaceOrError { __typename ... on Workspace { locationEntries {
    name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }
"""

LAUNCH = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on Error { message }
  }
}
"""

BACKFILL = """
query Backfill($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { id status numPartitions isAssetBackfill }
    ... on Error { message }
  }
}
"""

RUNS = """
query Runs($id: String!) {
  runsOrError(filter: {tags: [{key: "dagster/backfill", value: $id}]}) {
    ... on Runs { results { runId status startTime endTime creationTime
                            assetSelection { path } } }
  }
}
"""

PARTITIONS = """
query Partitions($keys: [AssetKeyInput!]) {
  assetNodes(assetKeys: $keys) {
    assetKey { path }
    isPartitioned
    assetPartitionStatuses { __typename ... on DefaultPartitionStatuses {
      materializedPartitions failedPartitions unmaterializedPartitions materializingPartitions } }
    assetMaterializations(limit: 1) { runId }
  }
}
"""


ALL_RUNS = """
{ runsOrError { ... on Runs { results { runId status tags { key value } } } } }
"""


def _location_loaded(url: str) -> str:
    """'' until the webserver can answer; then the location's load outcome."""
    try:
        workspace = graphql(url, WORKSPACE)["workspaceOrError"]
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return ""
    entries = {e["name"]: e for e in workspace.get("locationEntries", [])}
    entry = entries.get(LOCATION)
    if entry is None or entry["loadStatus"] != "LOADED":
        return ""
    outcome = entry["locationOrLoadError"]
    return f"{outcome['__typename']} {outcome.get('message', '')}".strip()


def _fresh_storage(stack: DevStack) -> dict[str, str]:
    """deploy/dagster.yaml's variables, pointed at a new database on the storage server."""
    assert stack.dagster is not None
    db = unique("dagster_prod")
    stack.dagster.admin(f'CREATE DATABASE "{db}" OWNER dagster')
    return {
        "DAGSTER_PG_USERNAME": "dagster",
        "DAGSTER_PG_PASSWORD": stack.passwords["dagster"],
        "DAGSTER_PG_HOST": LOOPBACK,
        "DAGSTER_PG_DB": db,
        "DAGSTER_PG_PORT": str(stack.dagster.port),
    }


def _selection(m: Migration) -> list[dict[str, list[str]]]:
    """The migration graph: head, every table, tail (never the cutover's asset)."""
    plan = load_plan(m.plan_path)
    keys = [*HEAD, *(dg.AssetKey(t.asset_path) for t in plan.tables), *TAIL]
    return [{"path": list(k.path)} for k in keys]


@dataclass
class Topology:
    url: str
    services: list[Service]
    timings: dict[str, float]  # seconds from the first start to each service being ready

    def check_alive(self) -> None:
        for service in self.services:
            assert service.alive(), f"the {service.name} exited: {service.output()}"


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((LOOPBACK, port)) == 0


def _up(service: Service, condition: Callable[[], object], what: str) -> None:
    """Wait for `condition`; a service that exits meanwhile fails at once, with its output."""
    wait_until(
        lambda: not service.alive() or condition(), START_TIMEOUT, f"{service.name}: {what}", 0.5
    )
    assert service.alive(), f"the {service.name} exited: {service.output()}"


@contextmanager
def production_topology(m: Migration, storage: dict[str, str], cwd: Path) -> Iterator[Topology]:
    """Code server, then webserver and daemon on a `grpc_server:` workspace; all stopped after."""
    code_port, web_port = free_port(), free_port()
    workspace = cwd / "workspace.yaml"
    workspace.write_text(
        "load_from:\n  - grpc_server:\n"
        f"      host: {LOOPBACK}\n      port: {code_port}\n      location_name: {LOCATION}\n"
    )
    instance_env = {**_base_env(), **storage, "DAGSTER_HOME": str(m.dagster_home)}
    code_args = [
        *(str(BIN / "dagster"), "code-server", "start", "--host", LOOPBACK),
        *("--port", str(code_port), "--module-name", "migration_assets.definitions"),
        *("--location-name", LOCATION),
    ]
    web_args = [str(BIN / "dagster-webserver"), "-h", LOOPBACK, "-p", str(web_port)]
    daemon_args = [str(BIN / "dagster-daemon"), "run"]
    timings: dict[str, float] = {}
    started = time.monotonic()
    with ExitStack() as stack:
        code = stack.enter_context(
            _service("code_server", code_args, {**instance_env, **m.env()}, cwd, code_port)
        )
        _up(code, lambda: _listening(code_port), "listening")
        timings["code server listening"] = time.monotonic() - started
        web = stack.enter_context(
            _service("webserver", [*web_args, "-w", str(workspace)], instance_env, cwd, web_port)
        )
        daemon = stack.enter_context(
            _service("daemon", [*daemon_args, "-w", str(workspace)], instance_env, cwd, 0)
        )
        url = f"http://{LOOPBACK}:{web_port}"
        _up(web, lambda: _location_loaded(url), "the code location loaded over gRPC")
        loaded = _location_loaded(url)
        assert loaded == "RepositoryLocation", f"the location did not load: {loaded}"
        timings["webserver serving the location"] = time.monotonic() - started
        instance = stack.enter_context(dg.DagsterInstance.from_config(str(m.dagster_home)))
        _up(daemon, lambda: "BACKFILL" in instance.get_daemon_heartbeats(), "first heartbeat")
        timings["daemon's first heartbeat"] = time.monotonic() - started
        yield Topology(url, [code, web, daemon], timings)


def launch_backfill(url: str, selection: list[dict[str, list[str]]]) -> str:
    params = {"assetSelection": selection, "allPartitions": True, "title": "production e2e"}
    result = graphql(url, LAUNCH, {"params": params})["launchPartitionBackfill"]
    assert result["__typename"] == "LaunchBackfillSuccess", result
    return str(result["backfillId"])


def follow_backfill(topology: Topology, backfill_id: str) -> dict[str, Any]:
    """The backfill as the webserver reports it, once it has ended."""

    def ended() -> dict[str, Any]:
        topology.check_alive()
        found = graphql(topology.url, BACKFILL, {"id": backfill_id})["partitionBackfillOrError"]
        assert found["__typename"] == "PartitionBackfill", found
        return found if found["status"] in DONE else {}

    return wait_until(ended, BACKFILL_TIMEOUT, f"backfill {backfill_id} to end", every=2.0)


def backfill_runs(url: str, backfill_id: str) -> list[dict[str, Any]]:
    runs = graphql(url, RUNS, {"id": backfill_id})["runsOrError"]["results"]
    return sorted(runs, key=lambda r: r["creationTime"])


def asset_states(url: str, selection: list[dict[str, list[str]]]) -> dict[str, dict[str, Any]]:
    nodes = graphql(url, PARTITIONS, {"keys": selection})["assetNodes"]
    return {"/".join(n["assetKey"]["path"]): n for n in nodes}


def follow_the_one_run(topology: Topology) -> dict[str, Any]:
    """The single run the UI launched, once it has ended."""

    def ended() -> dict[str, Any]:
        topology.check_alive()
        runs = graphql(topology.url, ALL_RUNS)["runsOrError"]["results"]
        assert len(runs) <= 1, runs
        return runs[0] if runs and runs[0]["status"] in RUN_DONE else {}

    return wait_until(ended, BACKFILL_TIMEOUT, "the UI's run to end", every=1.0)


def verified(home: Path, plan: MigrationPlan, run_ids: list[str]) -> dict[str, bool]:
    """Whether the latest audit report reads COMPLETE, and the whole-table check outcomes
    that `run_ids` recorded."""
    with dg.DagsterInstance.from_config(str(home)) as instance:
        report = instance.get_latest_materialization_event(REPORT_KEY)
        assert report is not None
        assert report.asset_materialization is not None
        complete = meta_text(report.asset_materialization.metadata, "complete") == "True"
        outcomes = latest_check_outcomes(instance, run_ids)
    wanted = {f"{'/'.join(t.asset_path)} {n}" for t in plan.tables for n in check_names(t, plan)}
    return {"report complete": complete} | {k: v for k, v in outcomes.items() if k in wanted}


def _describe_runs(runs: list[dict[str, Any]], launched: float) -> list[str]:
    """Each run: when it was created, queued-to-start and running seconds, its assets."""
    lines = []
    for run in runs:
        assets = ",".join("/".join(a["path"]) for a in run["assetSelection"] or [])
        created = run["creationTime"] - launched
        wait = (run["startTime"] or run["creationTime"]) - run["creationTime"]
        took = (run["endTime"] or 0) - (run["startTime"] or 0)
        lines.append(f"+{created:5.1f}s wait {wait:4.1f}s run {took:5.1f}s {assets[:90]}")
    return lines


def test_production_topology_ends_verified_from_the_ui_and_from_a_backfill(
    migration: MigrationFactory,
    stack: DevStack,
    isolated_cwd: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    m = migration()
    code, output = run_cli(["plan", "--out", str(m.plan_path)])  # default sizing: small tables
    assert code == 0, output
    plan = load_plan(m.plan_path)
    assert {t.slicing.partitions for t in plan.tables} == {1}, "default sizing: one slice each"
    storage = _fresh_storage(stack)
    for name, value in storage.items():
        monkeypatch.setenv(name, value)  # for the test's own look at the instance
    shutil.copyfile(DEPLOY_YAML, m.dagster_home / "dagster.yaml")
    selection = _selection(m)
    whole_table = {
        f"{'/'.join(t.asset_path)} {n}": True for t in plan.tables for n in check_names(t, plan)
    }
    with production_topology(m, storage, isolated_cwd) as topology, chromium_page() as page:
        clicked = time.monotonic()
        materialize_all_in_one_run(page, topology.url)
        one_run = follow_the_one_run(topology)
        topology.timings["UI Materialize all, one run (click to end)"] = time.monotonic() - clicked
        assert one_run["status"] == "SUCCESS", one_run
        assert_equal_databases(m.source_url, m.target_url)
        assert verified(m.dagster_home, plan, [one_run["runId"]]) == {
            "report complete": True,
            **whole_table,
        }

        launched_wall, launched = time.time(), time.monotonic()
        backfill_id = launch_backfill(topology.url, selection)
        backfill = follow_backfill(topology, backfill_id)
        topology.timings["backfill (launch to end)"] = time.monotonic() - launched
        runs = backfill_runs(topology.url, backfill_id)
        states = asset_states(topology.url, selection)
    report = [f"{k}: {v:.1f}s" for k, v in topology.timings.items()]
    print("\n".join(["", *report, *_describe_runs(runs, launched_wall)]))

    assert backfill["status"] == "COMPLETED_SUCCESS", (backfill, runs)
    assert backfill["isAssetBackfill"], backfill
    assert runs, "the backfill launched no run"
    assert {r["status"] for r in runs} == {"SUCCESS"}, runs
    assert_equal_databases(m.source_url, m.target_url)
    for table in plan.tables:
        node = states["/".join(table.asset_path)]
        partitions = node["assetPartitionStatuses"]
        assert sorted(partitions["materializedPartitions"]) == sorted(table.partition_keys), node
        for other in ("failedPartitions", "unmaterializedPartitions", "materializingPartitions"):
            assert partitions[other] == [], (table.qualified, other, partitions)
    for key in (*HEAD, *TAIL):
        node = states[key.to_user_string()]
        assert not node["isPartitioned"], node
        assert node["assetMaterializations"], f"{key.to_user_string()} was not materialized"
    # the backfill's partition run copies each table whole, so it runs their whole-table
    # checks; its last run's report, after them, reads COMPLETE again
    backfilled = [r["runId"] for r in runs]
    assert verified(m.dagster_home, plan, backfilled) == {"report complete": True, **whole_table}
