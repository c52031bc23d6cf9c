"""`migrate --submit`: the runs of `migrate`, launched through the Dagster webserver.

`migrate` executes its runs (the head, every due slice, the tail) in its own processes;
`--submit` hands the same runs to the deployment: the webserver's GraphQL API (`launchRun`,
what the UI's Launchpad calls) queues each in the instance, and the daemon's run queue and
the instance's run launcher execute it (a process per run, a Kubernetes job, an ECS task).
Each next run is launched as soon as the runs it needs have ended.

Why not an asset backfill, as the UI's "Materialize all" makes: Dagster 1.13's backfill
daemon looks for work every 30 s (not configurable) and starts a level of the graph per
look, so a backfill of any size spent about two minutes asleep (126 s for 3,400 rows that
`migrate` copies in 8 s). The runs here are the runs that backfill makes, of the same job.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from migration_assets.db.errors import MigrationError
from migration_assets.defs.checks import PARTITION_TAG
from migration_assets.engine.local import ProgressFn
from migration_assets.engine.session import (
    TAG_LAUNCHED_BY,
    Outcome,
    Session,
    StepResult,
)
from migration_assets.engine.work import RunSpec
from migration_assets.settings import http_origin

DAEMON_FRESH_SECONDS = 60.0
DAEMON_WAIT_SECONDS = 10.0
# The daemon beats every 30 s (a long iteration can delay a beat): three missed beats mean
# it is gone, and a queued run nobody launches would be waited for forever.
DAEMON_SILENT_SECONDS = 90.0
QUEUE_DAEMON = "QUEUED_RUN_COORDINATOR"
POLL_SECONDS = 0.5
HTTP_TIMEOUT_SECONDS = 60.0
LOCATION = "migration_assets"  # the code location's name in workspace.yaml
ASSET_JOB = "__ASSET_JOB"  # the code location's asset job, which every path runs
ENDED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}

WORKSPACE = """
query { workspaceOrError { __typename
  ... on Workspace { locationEntries { name locationOrLoadError { __typename
    ... on RepositoryLocation { repositories { name } }
    ... on PythonError { message } } } } } }
"""
LAUNCH = """
mutation Launch($params: ExecutionParams!) { launchRun(executionParams: $params) {
  __typename
  ... on LaunchRunSuccess { run { runId } }
  ... on RunConfigValidationInvalid { errors { message } }
  ... on Error { message } } }
"""


class DaemonStoppedError(MigrationError):
    """The daemon stopped beating while runs it must launch were waiting in its queue."""


@dataclass(frozen=True)
class Webserver:
    """The GraphQL API a `dagster-webserver` (or `dagster dev`) serves at `url`."""

    url: str

    def query(self, text: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        body = json.dumps({"query": text, "variables": variables or {}}).encode()
        request = urllib.request.Request(  # noqa: S310 - http(s) only: Settings checks it
            f"{self.url.rstrip('/')}/graphql",
            data=body,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_SECONDS) as response:  # noqa: S310
                answer = json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise MigrationError(self._unreachable(exc)) from None
        if answer.get("errors"):
            raise MigrationError(
                f"the Dagster webserver at {self.shown} refused a request: "
                f"{answer['errors'][0].get('message', '')[:300]}"
            )
        return dict(answer["data"])

    @property
    def shown(self) -> str:
        return http_origin(self.url)

    def _unreachable(self, exc: BaseException) -> str:
        reason = getattr(exc, "reason", exc)
        return (
            f"cannot reach the Dagster webserver at {self.shown} ({type(reason).__name__}): "
            "`migrate --submit` launches its runs through it. Start it (`migration-assets ui`, "
            "or `dagster-webserver -w workspace.yaml` with the same DAGSTER_HOME), or set "
            "MIGRATION_WEBSERVER_URL to where it serves, then run again. Runs it already "
            "queued go on; the next `migrate --submit` launches only what is not verified."
        )

    def serving(self) -> bool:
        """Up, with our code location loaded: what a process starting one waits for."""
        try:
            self.repository()
        except MigrationError:
            return False
        return True

    def repository(self) -> str:
        """The repository of our code location, once the webserver has it loaded."""
        entries = self.query(WORKSPACE)["workspaceOrError"].get("locationEntries") or []
        for entry in entries:
            if entry["name"] != LOCATION:
                continue
            loaded = entry["locationOrLoadError"] or {}
            if loaded.get("__typename") == "RepositoryLocation" and loaded["repositories"]:
                return str(loaded["repositories"][0]["name"])
            raise MigrationError(
                f"the Dagster webserver at {self.shown} could not load the code location "
                f"{LOCATION}: open it in the UI (Deployment) for the error, fix it, reload."
            )
        names = ", ".join(e["name"] for e in entries) or "none"
        raise MigrationError(
            f"the Dagster webserver at {self.shown} serves no code location {LOCATION} (it "
            f"serves: {names}): start it with this project's workspace.yaml."
        )


@dataclass
class Remote:
    """Runs launched through the webserver and followed in the instance they are stored in:
    what `migrate` executes itself (`Session.execute`), for a deployment to execute."""

    session: Session
    webserver: Webserver
    repository: str
    queued: bool  # the instance queues runs: its daemon must be alive to launch them
    silence: float  # seconds without a daemon heartbeat before following stops
    watch: DaemonWatch = field(init=False)

    def __post_init__(self) -> None:
        self.watch = DaemonWatch(self.session.instance)

    def execute(self, spec: RunSpec) -> Outcome:
        run_id = self.launch(spec)
        self.wait({run_id})
        return self.outcomes(spec, run_id)[0]

    def run(self, specs: list[RunSpec], on_done: ProgressFn) -> tuple[list[Outcome], str]:
        """Every spec launched at once (the queue and the `supabase_target` pool bound how
        many execute), an outcome per partition as each run ends."""
        launched = {self.launch(spec): spec for spec in specs}
        outcomes: list[Outcome] = []
        pending = set(launched)
        while pending:
            for run_id in self.wait(pending, first=True):
                pending.discard(run_id)
                for outcome in self.outcomes(launched[run_id], run_id):
                    outcomes.append(outcome)
                    on_done(outcome)
        return outcomes, ""

    def launch(self, spec: RunSpec) -> str:
        checks = self.session.checks_of(spec)
        selector: dict[str, Any] = {
            "repositoryLocationName": LOCATION,
            "repositoryName": self.repository,
            "jobName": ASSET_JOB,
            "assetSelection": [{"path": list(key.path)} for key in spec.assets],
        }
        if checks:
            selector["assetCheckSelection"] = [
                {"assetKey": {"path": list(c.asset_key.path)}, "name": c.name} for c in checks
            ]
        tags = {**self.session.run_tags(), TAG_LAUNCHED_BY: "cli --submit"}
        if spec.partition:
            tags[PARTITION_TAG] = spec.partition
        params = {
            "selector": selector,
            "runConfigData": self.session.run_config(spec),
            "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]},
        }
        result = self.webserver.query(LAUNCH, {"params": params})["launchRun"]
        if result["__typename"] != "LaunchRunSuccess":
            errors = result.get("errors") or [result]
            raise MigrationError(
                f"the Dagster webserver at {self.webserver.shown} did not launch the run "
                f"{spec.label} ({result['__typename']}): {errors[0].get('message', '')[:300]}"
            )
        return str(result["run"]["runId"])

    def wait(self, run_ids: set[str], *, first: bool = False) -> set[str]:
        """The runs that have ended: all of them, or (`first`) as soon as one has."""
        while True:
            records = self.session.instance.get_run_records(
                filters=dg.RunsFilter(run_ids=list(run_ids))
            )
            status = {r.dagster_run.run_id: r.dagster_run.status for r in records}
            ended = {run_id for run_id, s in status.items() if s in ENDED}
            if ended == run_ids or (first and ended):
                return ended
            if self.queued:  # a dead daemon neither dequeues runs nor sees their workers die
                silent = self.watch.silent_for()
                if silent > self.silence:
                    raise DaemonStoppedError(daemon_stopped(silent))
            time.sleep(POLL_SECONDS)

    def outcomes(self, spec: RunSpec, run_id: str) -> list[Outcome]:
        """An ended run's outcomes as its events in the instance tell them, timed from its
        start to its end (not from its launch: the queue's wait is Dagster's)."""
        instance = self.session.instance
        (record,) = instance.get_run_records(filters=dg.RunsFilter(run_ids=[run_id]))
        events = [e.dagster_event for e in instance.all_logs(run_id) if e.dagster_event]
        ok = record.dagster_run.status == dg.DagsterRunStatus.SUCCESS
        seconds = (record.end_time or 0.0) - (record.start_time or record.end_time or 0.0)
        return self.session.outcomes(spec, StoredRun(run_id, ok, events), seconds)


@dataclass(frozen=True)
class StoredRun:
    """A run as its events in the instance tell it: what `summarize` reads of a result."""

    run_id: str
    success: bool
    all_events: Sequence[dg.DagsterEvent]

    def get_asset_check_evaluations(self) -> Sequence[Any]:
        return StepResult(self.run_id, self.all_events).get_asset_check_evaluations()

    def get_asset_materialization_events(self) -> Sequence[dg.DagsterEvent]:
        return StepResult(self.run_id, self.all_events).get_asset_materialization_events()


def connect_remote(session: Session, wait: float = DAEMON_WAIT_SECONDS) -> Remote:
    """The webserver, with our code location loaded, and (for a run queue) a live daemon:
    refused before anything is launched, naming everything that is missing at once."""
    webserver = Webserver(session.settings.migration_webserver_url)
    problems, repository = [], ""
    try:
        repository = webserver.repository()
    except MigrationError as exc:
        problems.append(str(exc))
    queued = isinstance(session.instance.run_coordinator, dg.QueuedRunCoordinator)
    if queued and (problem := daemon_problem(session.instance, wait)):
        problems.append(problem)
    if problems:
        raise MigrationError("\n".join(problems))
    return Remote(session, webserver, repository, queued, DAEMON_SILENT_SECONDS)


def daemon_problem(instance: dg.DagsterInstance, wait: float = DAEMON_WAIT_SECONDS) -> str:
    """'' when a daemon dequeues this instance's runs (fresh heartbeats), else what to start."""
    deadline = time.monotonic() + wait
    while True:
        beats = instance.get_daemon_heartbeats()
        beat = beats.get(QUEUE_DAEMON)
        if beat is not None and time.time() - beat.timestamp < DAEMON_FRESH_SECONDS:
            return ""
        if time.monotonic() > deadline:
            return (
                "no Dagster daemon serves this DAGSTER_HOME (no run queue heartbeat in the "
                f"last {DAEMON_FRESH_SECONDS:.0f} s), so a submitted run would never start. "
                "Start one: `dagster-daemon run -w workspace.yaml` with the same DAGSTER_HOME "
                "and settings (or `migration-assets ui`), then run again."
            )
        time.sleep(1.0)


@dataclass
class DaemonWatch:
    """How long the daemon's run queue has been silent, on this machine's monotonic clock:
    the daemon's host stamps its beats with its own wall clock, which only dates the first
    beat seen (a skewed clock there must not end a healthy follow)."""

    instance: dg.DagsterInstance
    last_beat: float | None = None
    new_at: float = field(default_factory=time.monotonic)

    def silent_for(self) -> float:
        beat = self.instance.get_daemon_heartbeats().get(QUEUE_DAEMON)
        now = time.monotonic()
        if beat is not None and beat.timestamp != self.last_beat:
            age = max(0.0, time.time() - beat.timestamp) if self.last_beat is None else 0.0
            self.last_beat, self.new_at = beat.timestamp, now - age
        return now - self.new_at


def daemon_stopped(silent: float) -> str:
    return (
        f"the Dagster daemon stopped: no run queue heartbeat for {silent:.0f} s, so the runs "
        "waiting in its queue do not start. They stay queued and start once a daemon runs "
        "again: start one (`dagster-daemon run -w workspace.yaml` with the same DAGSTER_HOME "
        "and settings, or `migration-assets ui`); once they have ended, `migration-assets "
        "migrate --submit` launches only what is not verified."
    )
