"""Errors leave a step as a `dg.Failure` whose text carries no row values."""

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import psycopg

from migration_assets.db.errors import MigrationError, safe_message


@contextmanager
def as_failure(where: str) -> Iterator[None]:
    """Database errors reduced to `safe_message`, ours passed on as they are written."""
    try:
        yield
    except psycopg.Error as exc:
        raise dg.Failure(description=f"{where}: {safe_message(exc)}") from None
    except MigrationError as exc:
        raise dg.Failure(description=str(exc)) from None
