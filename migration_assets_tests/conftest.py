"""Real servers, started once per test session; each test gets its own databases.

Source, target (TLS only, Supabase-like roles) and pooler come from the devstack. Tests
that change data get fresh databases from `make_source` / `make_target`, so no test
sees another's leftovers and no server restarts between tests.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from migration_assets.db.dsn import display_url, parse_dsn
from migration_assets.db.schema import alembic_upgrade
from migration_assets.devstack.seed import seed
from migration_assets.devstack.stack import SOURCE_ROLE, DevStack
from migration_assets.settings import SETTING_NAMES

REPO_ROOT = Path(__file__).resolve().parents[1]
ALEMBIC_INI = REPO_ROOT / "alembic.ini"
SEED_PATIENTS = 300
_counter = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}_{os.getpid()}_{next(_counter)}"


@pytest.fixture(scope="session")
def stack() -> Iterator[DevStack]:
    with DevStack() as started:
        yield started


@pytest.fixture(scope="session")
def seeded_template(stack: DevStack) -> str:
    """A seeded clinic database to clone: seeding once keeps the suite fast."""
    name = unique("clinic_template")
    url = stack.create_source_database(name)
    alembic_upgrade(url, sslrootcert=None, config_path=ALEMBIC_INI)
    with psycopg.connect(url) as conn:
        seed(conn, patients=SEED_PATIENTS, seed=7)
        conn.commit()
    return name


@dataclass
class Databases:
    stack: DevStack
    template: str

    def source(self, *, seeded: bool = True) -> str:
        """A fresh source database: a copy of the seeded clinic, or empty."""
        assert self.stack.source is not None
        name = unique("src")
        if seeded:
            self.stack.source.admin(
                f'CREATE DATABASE "{name}" TEMPLATE "{self.template}" OWNER {SOURCE_ROLE}'
            )
            return self.stack.source_url_for(name)
        return self.stack.create_source_database(name)

    def target(self) -> str:
        return self.stack.create_target_database(unique("tgt"))

    def existing_pair(self, ddl: str, rows: str, mp: pytest.MonkeyPatch) -> tuple[str, str]:
        """A source alembic never saw (`ddl` and `rows`, run as the source role, its owner)
        and a target with the same schema: schema mode `existing`."""
        source, target = self.source(seeded=False), self.target()
        with psycopg.connect(source, autocommit=True) as conn:
            conn.execute(ddl)
            conn.execute(rows)
        with psycopg.connect(target, autocommit=True) as conn:
            conn.execute(ddl)
        mp.setenv("MIGRATION_SCHEMA_MODE", "existing")
        return source, target


@pytest.fixture(scope="session")
def databases(stack: DevStack, seeded_template: str) -> Databases:
    return Databases(stack, seeded_template)


@pytest.fixture
def isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No developer's .env can leak into a test."""
    monkeypatch.chdir(tmp_path)
    for name in SETTING_NAMES:
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@dataclass
class Migration:
    """One source/target pair with its own plan file and empty DAGSTER_HOME."""

    source_url: str
    target_url: str
    plan_path: Path
    dagster_home: Path
    ca_file: Path
    pooler_url: str | None = None

    def env(self) -> dict[str, str]:
        values = {
            "SOURCE_DATABASE_URL": self.source_url,
            "SUPABASE_DB_URL": self.target_url,
            "SUPABASE_SSLROOTCERT": str(self.ca_file),
            "MIGRATION_PLAN": str(self.plan_path),
            "DAGSTER_HOME": str(self.dagster_home),
        }
        if self.pooler_url:
            values["SUPABASE_POOLER_URL"] = self.pooler_url
        return values


MigrationFactory = Callable[..., Migration]


def _through_pooler(stack: DevStack, target_url: str) -> str | None:
    """The same target database through PgBouncer (its `*` entry serves every database)."""
    if stack.pooler_url is None:
        return None
    params = parse_dsn(stack.pooler_url)
    params["dbname"] = parse_dsn(target_url)["dbname"]
    return display_url(params, mask=False)


@pytest.fixture
def migration(
    databases: Databases, stack: DevStack, isolated_cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> MigrationFactory:
    """Factory: `migration()` gives a seeded source, an empty target, env set."""

    def make(*, source_url: str | None = None, target_url: str | None = None) -> Migration:
        home = isolated_cwd / unique("dagster_home")
        home.mkdir()
        target = target_url or databases.target()
        made = Migration(
            source_url=source_url or databases.source(),
            target_url=target,
            plan_path=isolated_cwd / "plan.json",
            dagster_home=home,
            ca_file=stack.ca_file,
            pooler_url=_through_pooler(stack, target),
        )
        for key, value in made.env().items():
            monkeypatch.setenv(key, value)
        return made

    return make
