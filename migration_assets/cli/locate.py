"""`migration-assets locate HASH`: from a key hash in a report back to the row's place.

Natural keys (an MRN, an e-mail) are PHI, so reports name them by a keyed hash; the
operator, who holds the secret, turns one back into a position on a server. The key itself
is never printed: only the table, the row's ctid and a SELECT to run.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from migration_assets.cli.render import EXIT_OK, EXIT_UNVERIFIED, out
from migration_assets.plan import PlanError
from migration_assets.settings import load_settings

if TYPE_CHECKING:
    from migration_assets.plan import MigrationPlan, TablePlan


def cmd_locate(args: argparse.Namespace) -> int:
    """Stream key text from one server, hash it with the operator's secret, print positions:
    the operator gets a `SELECT ... WHERE ctid = ...` to run, never the key itself."""
    from migration_assets.db.keyhash import KEY_PREFIX, ROW_PREFIX, parse_label
    from migration_assets.db.locate import find_rows
    from migration_assets.db.session import connect
    from migration_assets.plan import load_plan

    settings = load_settings(args.env_file)
    try:
        kind, digest = parse_label(args.hash)
    except ValueError as exc:
        raise PlanError(str(exc)) from None
    plan = load_plan(settings.plan_path(args.plan))
    tables = _locate_tables(plan, args.table, kind)
    secret = settings.key_secret(create=False)
    dsn, setting = (
        (settings.source_dsn, "SOURCE_DATABASE_URL")
        if args.on == "source"
        else (settings.target_dsn, "SUPABASE_DB_URL")
    )
    found = 0
    with connect(
        dsn, setting=setting, timeouts=settings.timeouts(), sslrootcert=settings.sslrootcert
    ) as conn:
        for t in tables:
            prefix = KEY_PREFIX if t.key else ROW_PREFIX
            for where in find_rows(
                conn,
                schema=t.schema_name,
                table=t.name,
                columns=t.key or t.copy_columns,
                partitioned=t.partitioned,
                wanted=prefix + digest,
                secret=secret,
                prefix=prefix,
            ):
                found += 1
                out.print(f"{t.qualified} on the {args.on}: ctid {where.ctid}", markup=False)
                out.print(f"  {where.select}", markup=False, soft_wrap=True)
    if found:
        out.print("(a ctid holds until the row is updated or the table is rewritten)")
        return EXIT_OK
    out.print(
        f"no row of {len(tables)} table(s) on the {args.on} hashes to {prefix_of(kind)}{digest}: "
        "the row may exist on the other side only (`--on target` for `extra` rows), or the "
        "hash was made with another secret (MIGRATION_KEY_SECRET, $DAGSTER_HOME/key_secret)",
        soft_wrap=True,
    )
    return EXIT_UNVERIFIED


def prefix_of(kind: str | None) -> str:
    return f"{kind}#" if kind else ""


def _locate_tables(plan: MigrationPlan, name: str | None, kind: str | None) -> list[TablePlan]:
    """Tables whose rows are reported by hash (keys the database does not assign: key#;
    no key: row#)."""
    if name:
        table = plan.table(name)
        if table.plain_key:
            raise PlanError(
                f"{name}'s key ({', '.join(table.key)}) is assigned by the database: reports "
                "show its keys as they are, there is no hash to locate"
            )
        return [table]
    hashed = [t for t in plan.tables if not t.plain_key]
    return [t for t in hashed if kind is None or (kind == "key") == bool(t.key)]
