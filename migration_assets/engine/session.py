"""One process's view of the migration: settings, plan, definitions, instance, and a way to
execute one run of the code location's asset job, exactly as the UI would launch it."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import dagster as dg

from migration_assets.defs.build import build_definitions
from migration_assets.defs.history import meta_text
from migration_assets.defs.keys import REPORT_COMPLETE, REPORT_KEY
from migration_assets.engine.driver import TAG_DRIVER, this_process
from migration_assets.engine.home import open_instance, prepare_process
from migration_assets.engine.work import RunSpec
from migration_assets.plan import MigrationPlan, TablePlan, load_plan
from migration_assets.settings import Settings

TAG_LAUNCHED_BY = "migration_assets/launched_by"
TAG_HOST = "migration_assets/host"
# The CLI prints its own (PHI-safe) summary; Dagster's console echo would only repeat it.
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
# what a check's metadata says went wrong, in the order people want to read it
WHY_KEYS = ("details", "behind", "queries", "error", "fix")


@dataclass(frozen=True)
class Outcome:
    spec: RunSpec
    ok: bool
    rows: int
    seconds: float
    message: str = ""
    run_id: str = ""
    copied: bool = True  # False: the slice already equalled the source's, nothing moved
    indexes_rebuilt: int = 0
    crashed: bool = False  # a step raised (could not run), rather than a check failing
    audit: str = ""  # the audit report this run wrote (its Markdown file), if any
    audit_complete: bool = False


@dataclass
class Session:
    settings: Settings
    plan_path: Path
    plan: MigrationPlan
    defs: dg.Definitions
    instance: dg.DagsterInstance
    driver: str = ""  # the process whose command these runs serve (`engine.driver`)

    @classmethod
    def open(
        cls,
        settings: Settings,
        plan_path: Path,
        instance: dg.DagsterInstance | None = None,
        *,
        driver: str = "",
    ) -> Session:
        """`driver`: for a worker, the process that owns its pool; otherwise this one."""
        home = prepare_process(settings)
        plan = load_plan(plan_path)
        defs = build_definitions(plan, settings, plan_path)
        instance = instance or open_instance(home)
        return cls(settings, plan_path, plan, defs, instance, driver or this_process())

    @property
    def job(self) -> dg.JobDefinition:
        return self.defs.resolve_implicit_global_asset_job_def()

    def materialize(
        self, spec: RunSpec, run_config: dict[str, Any] | None = None
    ) -> dg.ExecuteInProcessResult:
        """One run of the code location's asset job (a subset of it for check-only runs),
        recorded in the instance like any other; never raises for a failed step."""
        job = self.job
        selection: list[dg.AssetKey] | None = list(spec.assets)
        checks = self.checks_of(spec)
        if checks:
            job = job.get_subset(asset_selection=set(spec.assets), asset_check_selection=checks)
            selection = None
        return job.execute_in_process(
            instance=self.instance,
            partition_key=spec.partition,
            asset_selection=selection,
            run_config={**QUIET, **run_config} if run_config else self.run_config(spec),
            tags=self.run_tags(),
            raise_on_error=False,
        )

    def run_tags(self) -> dict[str, str]:
        """Who launched a run, from where, for which command (`engine.driver`)."""
        return {TAG_LAUNCHED_BY: "cli", TAG_HOST: socket.gethostname(), TAG_DRIVER: self.driver}

    def checks_of(self, spec: RunSpec) -> frozenset[dg.AssetCheckKey]:
        """The checks a run selects; empty: every check of its assets (the head and tail)."""
        return spec.checks or (self._slice_checks(spec) if spec.partition else frozenset())

    def execute(self, spec: RunSpec, run_config: dict[str, Any] | None = None) -> Outcome:
        """One run, summarised for progress and the final report."""
        started = time.perf_counter()
        result = self.materialize(spec, run_config)
        return summarize(spec, result, time.perf_counter() - started)

    def execute_each(self, spec: RunSpec) -> list[Outcome]:
        """One run, summarised per partition it carries: a run of several small tables
        reports each table's slice as its own run would (its partition status is its own)."""
        if not spec.members:
            return [self.execute(spec)]
        started = time.perf_counter()
        result = self.materialize(spec)
        return self.outcomes(spec, result, time.perf_counter() - started)

    def outcomes(self, spec: RunSpec, result: RunResult, seconds: float) -> list[Outcome]:
        """A run's outcome per partition it carried, each member's from its own step's
        events, with an even share of the run's time; wherever the run executed."""
        if not spec.members:
            return [summarize(spec, result, seconds)]
        share = seconds / len(spec.members)
        return [
            summarize(member, StepResult.of(result, self.step_key(member)), share)
            for member in spec.members
        ]

    def _slice_checks(self, spec: RunSpec) -> frozenset[dg.AssetCheckKey]:
        """A partition run's checks: each slice's own, which its asset's step evaluates.

        Selecting a table asset also selects its whole-table checks, and in a partition run
        they only log that they wait for the whole table (`verify` runs them): 14 tables
        made 14 such steps and 126 of the run's 259 events, half of its Dagster time. A UI
        backfill still plans them there; they end the same way, not evaluated."""
        return frozenset(
            key for asset in spec.assets for key in self.defs.resolve_assets_def(asset).check_keys
        )

    def step_key(self, spec: RunSpec) -> str:
        return self.defs.resolve_assets_def(spec.assets[0]).op.name

    def run_checks(self, tables: list[TablePlan] | None = None) -> dg.ExecuteInProcessResult:
        """Every separately executable check (or those of `tables`), in one recorded run."""
        chosen = {tuple(t.asset_path) for t in tables} if tables is not None else None
        keys = frozenset(
            key
            for checks in self.defs.asset_checks or []
            for key in checks.check_keys
            if chosen is None or tuple(key.asset_key.path) in chosen
        )
        return self.materialize(RunSpec(label="checks", assets=(), checks=keys))

    def write_report(self, out_dir: Path) -> dg.ExecuteInProcessResult:
        config = {"ops": {"migration_audit_report": {"config": {"out_dir": str(out_dir)}}}}
        return self.materialize(RunSpec(label="audit report", assets=(REPORT_KEY,)), config)

    def run_config(self, spec: RunSpec) -> dict[str, Any]:
        """Quiet console logs; `--force` tells the slice's op to re-copy."""
        if not spec.force:
            return dict(QUIET)
        op = self.defs.resolve_assets_def(spec.assets[0]).op.name
        return {**QUIET, "ops": {op: {"config": {"force": True}}}}


class RunResult(Protocol):
    """What a summary reads of a run: Dagster's result, or one step's share of it."""

    @property
    def success(self) -> bool: ...
    @property
    def run_id(self) -> str: ...
    @property
    def all_events(self) -> Sequence[dg.DagsterEvent]: ...
    def get_asset_check_evaluations(self) -> Sequence[Any]: ...
    def get_asset_materialization_events(self) -> Sequence[dg.DagsterEvent]: ...


@dataclass(frozen=True)
class StepResult:
    """One step of a run of several: its events only, and whether it (not the run) failed."""

    run_id: str
    all_events: Sequence[dg.DagsterEvent]

    @classmethod
    def of(cls, result: RunResult, step_key: str) -> StepResult:
        return cls(result.run_id, [e for e in result.all_events if e.step_key == step_key])

    @property
    def success(self) -> bool:
        done = any(e.is_step_success for e in self.all_events)
        return done and not any(e.is_step_failure for e in self.all_events)

    def get_asset_check_evaluations(self) -> Sequence[Any]:
        return [
            e.event_specific_data
            for e in self.all_events
            if e.event_type_value == dg.DagsterEventType.ASSET_CHECK_EVALUATION.value
        ]

    def get_asset_materialization_events(self) -> Sequence[dg.DagsterEvent]:
        return [e for e in self.all_events if e.is_step_materialization]


def summarize(spec: RunSpec, result: RunResult, seconds: float) -> Outcome:
    """A run (or one step's share of it) as progress and the final report need it."""
    failures = blocking_failures(result)
    audit = _audit(result)
    return Outcome(
        spec=spec,
        ok=result.success and not failures,
        rows=_count(result, "rows"),
        seconds=seconds,
        message="" if result.success and not failures else describe_failure(result),
        run_id=result.run_id,
        copied=_copied(result),
        indexes_rebuilt=_count(result, "indexes_rebuilt"),
        crashed=not result.success and crashed(result),
        audit=audit.get("markdown", ""),
        audit_complete=audit.get("complete") == "True",
    )


def blocking_failures(result: RunResult) -> list[Any]:
    """Check evaluations that failed with ERROR severity (WARN is advisory). The audit
    report's verdict is not one: it records the others (and whole-table checks not yet run),
    it does not judge the run that wrote it."""
    return [
        e
        for e in result.get_asset_check_evaluations()
        if not e.passed
        and e.severity == dg.AssetCheckSeverity.ERROR
        and e.check_name != REPORT_COMPLETE
    ]


def crashed(result: RunResult) -> bool:
    return raised(result.all_events)


def raised(events: Iterable[dg.DagsterEvent]) -> bool:
    """A step failed for a reason other than a blocking check that failed: a failed check is
    a result (shown with its details), not a check that could not run."""
    for event in events:
        if event.is_step_failure and event.step_failure_data is not None:
            error = event.step_failure_data.error
            if error is None or error.cls_name != "DagsterAssetCheckFailedError":
                return True
    return False


def failure_message(result: RunResult) -> str:
    return failure_text(result.all_events)


def failure_text(events: Iterable[dg.DagsterEvent]) -> str:
    """The first failed step's own description (already free of row values)."""
    for event in events:
        if event.is_step_failure and event.step_failure_data is not None:
            data = event.step_failure_data
            if data.user_failure_data is not None and data.user_failure_data.description:
                return data.user_failure_data.description.strip()
            if data.error is not None:
                return data.error.message.strip().split("\n")[0][:500]
    return "the run failed (see the Dagster UI for the run's events)"


def describe_failure(result: RunResult) -> str:
    """The failed checks of a run, each with what its metadata says, else the step's error."""
    lines = []
    for evaluation in blocking_failures(result):
        meta = evaluation.metadata
        text = "\n".join(meta_text(meta, key) for key in WHY_KEYS if key in meta)
        lines.append(f"{evaluation.check_name} failed:\n{text}")
    if crashed(result) or not lines:
        lines.append(failure_message(result))
    return "\n".join(lines)


def _count(result: RunResult, key: str) -> int:
    """A number the run's materializations recorded, summed over them."""
    return sum(
        int(meta_text(e.materialization.metadata, key, "0") or 0)
        for e in result.get_asset_materialization_events()
    )


def _audit(result: RunResult) -> dict[str, str]:
    """Where the run's audit report went and its verdict, as the asset recorded them."""
    for event in result.get_asset_materialization_events():
        if event.asset_key == REPORT_KEY:
            meta = event.materialization.metadata
            return {key: meta_text(meta, key) for key in ("markdown", "complete")}
    return {}


def _copied(result: RunResult) -> bool:
    return all(
        meta_text(e.materialization.metadata, "copied", "True") == "True"
        for e in result.get_asset_materialization_events()
    )
