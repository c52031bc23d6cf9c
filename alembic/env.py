"""Alembic environment for the clinic application's schema.

The database is resolved in this order, so one env.py serves the CLI, tests and the Dagster
``supabase_schema`` asset alike:

1. ``config.attributes["connection"]``: a SQLAlchemy Connection (or Engine) handed in by code.
   It is never closed or disposed here. If it is already in a transaction, committing is
   left to its owner (so the caller can run more in the same transaction); if not, the
   migrations commit their own.
2. ``alembic -x url=...``
3. the ``sqlalchemy.url`` main option (only ever set programmatically; alembic.ini has none)
4. ``DATABASE_URL``
5. ``SUPABASE_DB_URL``

The URL is never printed or logged: it carries the password.
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from sqlalchemy import Connection, Engine, create_engine, pool
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from alembic import context

config = context.config

URL_SOURCES = (
    'config.attributes["connection"]',
    "-x url=...",
    "sqlalchemy.url",
    "DATABASE_URL",
    "SUPABASE_DB_URL",
)
# Plain libpq-style schemes run with psycopg 3, the driver the rest of the project uses.
PLAIN_SCHEMES = frozenset({"postgresql", "postgres"})
DRIVER = "postgresql+psycopg"

# alembic.ini's logging is for the CLI. A host process (Dagster, pytest) keeps its own: it is
# skipped when a connection is handed in, or when attributes["configure_logger"] is False.
_configure_logger = config.attributes.get(
    "configure_logger", config.attributes.get("connection") is None
)
if config.config_file_name is not None and _configure_logger:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _raw_url() -> tuple[str, str] | None:
    """The first configured URL and the name of where it came from, or None."""
    candidates = (
        ("-x url=...", context.get_x_argument(as_dictionary=True).get("url")),
        ("sqlalchemy.url", config.get_main_option("sqlalchemy.url")),
        ("DATABASE_URL", os.environ.get("DATABASE_URL")),
        ("SUPABASE_DB_URL", os.environ.get("SUPABASE_DB_URL")),
    )
    for source, value in candidates:
        if value and value.strip():
            return value.strip(), source
    return None


def normalize_url(raw: str, source: str) -> URL:
    """Parse a URL, run plain postgresql:// on psycopg 3 and pin the CA file if one is given.

    Errors name the source, never the value: the value holds a password.
    """
    try:
        url = make_url(raw)
    except ArgumentError:
        raise RuntimeError(f"the database URL from {source} could not be parsed") from None
    if url.drivername in PLAIN_SCHEMES:
        url = url.set(drivername=DRIVER)
    if not url.drivername.startswith("postgresql"):
        raise RuntimeError(
            f"the database URL from {source} is not a PostgreSQL URL ({url.drivername}://)"
        )
    rootcert = os.environ.get("SUPABASE_SSLROOTCERT")
    if rootcert and "sslrootcert" not in url.query:
        url = url.update_query_dict({"sslrootcert": rootcert})
    return url


def database_url() -> URL:
    """The target URL from the first configured source, or a clear error naming them all."""
    found = _raw_url()
    if found is None:
        raise RuntimeError(
            f"no database configured for alembic: pass a Connection in {URL_SOURCES[0]}, "
            f"or set one of: {', '.join(URL_SOURCES[1:])}"
        )
    return normalize_url(*found)


def _run(connection: Connection) -> None:
    """Run all pending migrations in one transaction: PostgreSQL DDL is transactional."""
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    """Emit SQL instead of running it (``alembic upgrade head --sql``).

    No connection is made, so a URL is optional: only the dialect matters.
    """
    found = _raw_url()
    context.configure(
        url=None if found is None else normalize_url(*found),
        dialect_name="postgresql" if found is None else None,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run against the passed-in connection, or a short-lived engine of our own."""
    given = config.attributes.get("connection")
    if isinstance(given, Connection):
        _run(given)
        return
    if isinstance(given, Engine):
        with given.connect() as connection:
            _run(connection)
        return
    if given is not None:
        raise TypeError(
            'config.attributes["connection"] must be a SQLAlchemy Connection or Engine, '
            f"not {type(given).__name__}"
        )
    engine = create_engine(database_url(), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
