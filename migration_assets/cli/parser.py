"""The command line: names and options are a contract with users' scripts."""

from __future__ import annotations

import argparse
from pathlib import Path

from migration_assets import __version__
from migration_assets.plan import (
    DEFAULT_MIN_PARTITIONS,
    DEFAULT_ROWS_PER_PARTITION,
    MIN_ROWS_TO_SPLIT,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="migration-assets",
        description="Move a PostgreSQL database into Supabase as verified Dagster assets.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--env-file", default=".env", help="settings file (default: .env)")
    sub = parser.add_subparsers(dest="command", required=True)
    _demo(sub)
    _ui(sub)
    stack = sub.add_parser("stack", help="stop a stack left running by `demo --keep`")
    stack.add_argument("action", choices=["down"])
    stack.add_argument("dir", type=Path, help="the stack's directory (printed by demo --keep)")
    _plan(sub)
    _migrate(sub)
    _cutover(sub)
    status = sub.add_parser("status", help="partitions materialized / failed / missing")
    _plan_option(status)
    verify = sub.add_parser("verify", help="run every check; exit 1 if an ERROR check fails")
    _plan_option(verify)
    verify.add_argument("--tables", nargs="+", help="only these tables (schema.table)")
    report = sub.add_parser("report", help="write or check the audit report")
    _plan_option(report)
    what = report.add_mutually_exclusive_group(required=True)
    what.add_argument("--out", type=Path, help="write the next report of the chain into DIR")
    what.add_argument(
        "--check",
        type=Path,
        help="verify the reports in DIR: keyed digests, chain, and its anchors on the target "
        "and in the Dagster instance",
    )
    report.add_argument(
        "--skip-anchor",
        action="append",
        choices=["target", "dagster"],
        help="with --check: do not compare with this anchor (an unreachable one exits 2)",
    )
    _locate(sub)
    return parser


def _locate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    locate = sub.add_parser(
        "locate", help="where the row of a reported key hash (key#..., row#...) lives"
    )
    locate.add_argument("hash", help="as reported, e.g. key#3f9a1c2b7d4e")
    _plan_option(locate)
    locate.add_argument("--table", help="only this table (schema.table)")
    locate.add_argument(
        "--on",
        choices=["source", "target"],
        default="source",
        help="the server to search (default: source; `extra` rows exist on the target only)",
    )


def _demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser("demo", help="throwaway servers, seed, plan, migrate, verify")
    demo.add_argument("--patients", type=int, default=10_000)
    demo.add_argument("--keep", action="store_true", help="leave the servers running")
    demo.add_argument("--workers", type=int, default=2)
    demo.add_argument("--seed", type=int, default=42)


def _ui(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ui = sub.add_parser(
        "ui", help="the Dagster UI (webserver + daemon) on your settings or a throwaway stack"
    )
    ui.add_argument("--port", type=int, default=3000, help="the UI's port on 127.0.0.1")
    ui.add_argument("--demo", action="store_true", help="a throwaway stack even if configured")
    ui.add_argument("--patients", type=int, default=10_000, help="demo: patients to seed")
    ui.add_argument("--seed", type=int, default=42, help="demo: seed of the synthetic data")
    _plan_knobs(ui)


def _plan(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    plan = sub.add_parser("plan", help="reflect the source and write a plan file")
    plan.add_argument("--out", type=Path, required=True)
    _plan_knobs(plan)
    plan.add_argument(
        "--schema",
        action="append",
        dest="schemas",
        help="only these schemas (repeatable; default: all user schemas)",
    )


def _plan_knobs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows-per-partition", type=int, default=DEFAULT_ROWS_PER_PARTITION)
    parser.add_argument("--min-partitions", type=int, default=DEFAULT_MIN_PARTITIONS)
    parser.add_argument(
        "--split-above",
        type=int,
        default=MIN_ROWS_TO_SPLIT,
        help="tables with fewer rows get a single partition",
    )


def _migrate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    migrate = sub.add_parser("migrate", help="copy every missing or failed partition")
    _plan_option(migrate)
    migrate.add_argument("--workers", type=int, default=2)
    migrate.add_argument("--force", action="store_true", help="re-copy every partition")
    migrate.add_argument(
        "--resync",
        action="store_true",
        help="compare every slice on both sides; re-copy only those that differ",
    )
    migrate.add_argument(
        "--submit",
        action="store_true",
        help="launch the same runs through the Dagster webserver at MIGRATION_WEBSERVER_URL "
        "(the instance's run queue and launcher execute them) and follow them",
    )


def _cutover(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cutover = sub.add_parser(
        "cutover",
        help="freeze the source, re-copy what changed, prove it, write the app's settings",
    )
    _plan_option(cutover)
    cutover.add_argument(
        "--app-env", type=Path, help="write the application's new settings here (0600)"
    )
    cutover.add_argument(
        "--no-freeze",
        action="store_true",
        help="the application is stopped already: only prove the source is quiet",
    )
    cutover.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    cutover.add_argument(
        "--rollback", action="store_true", help="unfreeze the source (the target stays)"
    )
    cutover.add_argument(
        "--workers",
        type=int,
        default=2,
        help="accepted for existing scripts, no effect: the final delta is one step of the "
        "cutover job, which re-copies the slices that differ one after another",
    )


def _plan_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plan", type=Path, help="plan file (default: $MIGRATION_PLAN)")
