"""`migration-assets report --check DIR`: is the chain untouched, authentic and anchored?

Three things are checked, and the output names each: the directory's chain (numbering,
links, Markdown digests, each report's keyed digest under the key derived from the
secret the runs used), the anchor on the target and the anchor in the Dagster instance.
Whoever can write the directory can delete its newest report; only the anchors, kept
elsewhere, show that. An anchor that cannot be reached is not checked, and that fails
closed (exit 2) unless `--skip-anchor` says the auditor checks without it on purpose.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import TYPE_CHECKING

from migration_assets.cli.render import EXIT_CONFIG, EXIT_OK, EXIT_UNVERIFIED, out
from migration_assets.db.errors import MigrationError
from migration_assets.settings import load_settings

if TYPE_CHECKING:
    from migration_assets.report import ChainCheck
    from migration_assets.settings import Settings

TARGET, DAGSTER = "target", "dagster"
ANCHORS = (TARGET, DAGSTER)


@dataclass(frozen=True)
class AnchorView:
    """One anchor as read: its records of the chain, or why it was not checked."""

    name: str
    where: str
    records: list[tuple[int, str]] | None = None
    not_checked: str = ""


def check_reports(args: argparse.Namespace) -> int:
    from migration_assets.report import check_chain, compare_anchor, report_key

    settings = load_settings(args.env_file)
    secret, from_where = _secret(settings)
    found = check_chain(args.check, report_key(secret))
    out.print(_summary(found, from_where), soft_wrap=True, markup=False)
    skipped = set(args.skip_anchor or [])
    views = [_read(name, settings, found, skipped) for name in ANCHORS]
    problems = list(found.problems)
    for view in views:
        if view.records is not None:
            problems += compare_anchor(found, view.where, view.records)
        _print_view(view, skipped)
    for problem in problems:
        out.print(f"[red]TAMPERED or BROKEN:[/] {problem}", soft_wrap=True, highlight=False)
    if problems:
        return EXIT_UNVERIFIED
    unchecked = [v for v in views if v.records is None and v.name not in skipped]
    if unchecked:
        out.print(
            "[yellow]NOT CHECKED:[/] the chain is intact, but not every anchor was compared: "
            "a deleted newest report would go unnoticed (exit 2)",
            soft_wrap=True,
        )
        return EXIT_CONFIG
    checked = ", ".join(v.name for v in views if v.records is not None) or "none"
    out.print(
        f"[green]report chain in {args.check} is intact[/] (anchors checked: {checked})",
        soft_wrap=True,
    )
    return EXIT_OK


def _secret(settings: Settings) -> tuple[bytes, str]:
    """The secret of the runs that wrote the reports: never a new one (it could not match)."""
    from migration_assets.db.keyhash import SECRET_ENV, SECRET_FILE

    try:
        secret = settings.key_secret(create=False)
    except MigrationError as exc:
        raise MigrationError(
            "the reports' digests are keyed with the secret of the runs that wrote them: set "
            f"{SECRET_ENV} to it, or DAGSTER_HOME to their instance (its {SECRET_FILE}). "
            f"{exc}"
        ) from None
    return secret, SECRET_ENV if settings.migration_key_secret else f"$DAGSTER_HOME/{SECRET_FILE}"


def _summary(found: ChainCheck, from_where: str) -> str:
    numbers = sorted(found.digests)
    span = f"#{numbers[0]}..#{numbers[-1]}" if numbers else "none"
    return (
        f"chain in {found.directory}: {len(numbers)} report(s) ({span}), chain id "
        f"{found.chain or 'unknown'}; keyed digests checked with the key derived from "
        f"{from_where}"
    )


def _read(name: str, settings: Settings, found: ChainCheck, skipped: set[str]) -> AnchorView:
    where = _where(name, settings)
    if name in skipped:
        return AnchorView(name, where, not_checked="skipped (--skip-anchor)")
    if found.chain is None:
        return AnchorView(name, where, not_checked="the directory names no single chain")
    reader = _target_records if name == TARGET else _dagster_records
    try:
        return AnchorView(name, where, records=reader(settings, found.chain))
    except UnreachableError as exc:
        return AnchorView(name, where, not_checked=str(exc))


class UnreachableError(Exception):
    """An anchor that could not be read; the message says why and what to set."""


def _where(name: str, settings: Settings) -> str:
    from migration_assets.db.anchor import WHERE
    from migration_assets.db.dsn import mask_dsn

    if name == TARGET:
        url = settings.supabase_db_url
        shown = mask_dsn(url.get_secret_value()) if url is not None else "SUPABASE_DB_URL unset"
        return f"the target ({shown}, {WHERE})"
    return f"the Dagster instance ({settings.dagster_home or 'DAGSTER_HOME unset'})"


def _target_records(settings: Settings, chain: str) -> list[tuple[int, str]]:
    import psycopg

    from migration_assets.db.anchor import read_anchors
    from migration_assets.db.errors import safe_message
    from migration_assets.db.session import connect

    if settings.supabase_db_url is None:
        raise UnreachableError("SUPABASE_DB_URL is not set")
    try:
        with connect(
            settings.target_dsn,
            setting="SUPABASE_DB_URL",
            timeouts=settings.timeouts(),
            sslrootcert=settings.sslrootcert,
        ) as conn:
            records = read_anchors(conn, chain)
            conn.rollback()
    except MigrationError as exc:
        raise UnreachableError(str(exc).splitlines()[0]) from None
    except psycopg.Error as exc:
        message = safe_message(exc, statement_timeout=settings.migration_statement_timeout)
        raise UnreachableError(message) from None
    return records or []  # no anchor table: nothing anchored there, which compare names


def _dagster_records(settings: Settings, chain: str) -> list[tuple[int, str]]:
    """Read-only: an instance directory that does not exist is not created."""
    home = settings.dagster_home
    if home is None:
        raise UnreachableError("DAGSTER_HOME is not set")
    if not (home / "dagster.yaml").is_file() and not (home / "storage").is_dir():
        raise UnreachableError(f"{home} holds no Dagster instance (no dagster.yaml, no storage)")
    import dagster as dg

    from migration_assets.defs.anchors import dagster_anchors

    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            return dagster_anchors(instance, chain)
    except Exception as exc:  # any storage failure: this anchor is not checked
        first = (str(exc).splitlines() or [""])[0][:200]
        raise UnreachableError(
            f"its storage could not be read ({type(exc).__name__}: {first})"
        ) from None


def _print_view(view: AnchorView, skipped: set[str]) -> None:
    if view.records is not None:
        newest = max((s for s, _ in view.records), default=None)
        said = f"newest anchored report #{newest}" if newest else "no anchor of this chain"
        out.print(f"anchor checked: {view.where}: {said}", soft_wrap=True, markup=False)
        return
    out.print(f"anchor NOT checked: {view.where}: {view.not_checked}", soft_wrap=True, markup=False)
    if view.name not in skipped:
        setting = "SUPABASE_DB_URL" if view.name == TARGET else "DAGSTER_HOME"
        out.print(
            f"  to check it, set {setting} (and what it needs) to reach it; to check without "
            f"it on purpose: --skip-anchor {view.name}",
            soft_wrap=True,
            markup=False,
        )
