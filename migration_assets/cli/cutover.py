"""`migration-assets cutover` and `cutover --rollback`: the cutover jobs of the code location,
executed in this process against the instance in DAGSTER_HOME (the UI shows the same runs)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from migration_assets.cli.commands import open_session
from migration_assets.cli.render import EXIT_CONFIG, EXIT_OK, EXIT_UNVERIFIED, err, out

if TYPE_CHECKING:
    import dagster as dg

STEPS = ("cutover_ready", "source_frozen", "switch_application")  # the steps with config
# the run's events are in the UI; here the summary and the failing step's own message
QUIET = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}


def cmd_cutover(args: argparse.Namespace) -> int:
    from migration_assets.engine.cutover import cutover_job

    session = open_session(args)
    if args.rollback:
        rollback = cutover_job(session.defs, "migration_cutover_rollback")
        result = rollback.execute_in_process(
            instance=session.instance, run_config=QUIET, raise_on_error=False
        )
        return _finish(result, "source_unfrozen")
    if not args.yes and not _confirmed(args):
        return EXIT_CONFIG
    config = {
        "freeze": not args.no_freeze,
        "app_env": str(args.app_env.resolve()) if args.app_env else "",
    }
    out.print(
        "cutover: "
        + ("proving the source is quiet" if args.no_freeze else "freezing the source")
        + ", re-checking every slice and re-copying those that changed, running every check, "
        "then proving no write reached the source (the run is in the Dagster UI)",
        soft_wrap=True,
    )
    result = cutover_job(session.defs, "migration_cutover").execute_in_process(
        instance=session.instance,
        run_config={**QUIET, "ops": {step: {"config": config} for step in STEPS}},
        raise_on_error=False,
    )
    return _finish(result, "switch_application")


def _confirmed(args: argparse.Namespace) -> bool:
    what = "prove the source is quiet" if args.no_freeze else "freeze the source database"
    if not sys.stdin.isatty():
        err.print(f"cutover will {what}: pass --yes to confirm (no terminal to ask on)")
        return False
    answer = input(f"cutover will {what} and switch the application. Type 'cutover': ")
    return answer.strip() == "cutover"


def _finish(result: dg.ExecuteInProcessResult, last: str) -> int:
    from migration_assets.engine.cutover_state import EXIT_TAG
    from migration_assets.engine.session import failure_text

    if result.success:
        evidence: dict[str, Any] = result.output_for_node(last)
        for key, value in evidence.items():
            out.print(f"  {key}: {value}", soft_wrap=True)
        out.print(f"[green]{evidence.get('state', 'done')}[/] (run {result.run_id})")
        return EXIT_OK
    failures = [e for e in result.all_events if e.is_step_failure]
    err.print(f"[bold red]cutover stopped[/] (run {result.run_id}):")
    err.print(failure_text(failures), markup=False, soft_wrap=True)
    return _exit_code(failures, EXIT_TAG)


def _exit_code(failures: list[dg.DagsterEvent], tag: str) -> int:
    for event in failures:
        data = event.step_failure_data
        if data is not None and data.user_failure_data is not None:
            value: Any = data.user_failure_data.metadata.get(tag)
            if value is not None:
                return int(value.value)
    return EXIT_UNVERIFIED
