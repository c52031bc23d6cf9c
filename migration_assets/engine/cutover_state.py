"""What a cutover has done so far, kept where a killed one can be finished or undone from.

The state file (DAGSTER_HOME/cutover/state.json, 0600) is written before the source is
changed: the prior setting first (intent), then the freeze record, then the switch. A
cutover killed at any step leaves a file that says what to undo; the source itself says
whether it is frozen (`db.freeze.is_frozen`).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from migration_assets.db.dsn import display_url, parse_dsn
from migration_assets.db.freeze import FreezeRecord
from migration_assets.defs.keys import FOREIGN_KEYS_INTACT, TABLE_CHECKSUM, TABLE_ROW_COUNT
from migration_assets.defs.report import collect_report, unverified
from migration_assets.plan import MigrationPlan, load_plan
from migration_assets.private import write_private
from migration_assets.settings import Settings

FREEZING, FROZEN, SWITCHED, ROLLED_BACK = "freezing", "frozen", "switched", "rolled back"


def _path(settings: Settings) -> Path:
    settings.require("DAGSTER_HOME")
    assert settings.dagster_home is not None
    return settings.dagster_home / "cutover" / "state.json"


@dataclass
class CutoverState:
    phase: str | None = None
    database: str = ""
    prior: str | None = None  # the source's database-level default_transaction_read_only
    record: FreezeRecord | None = None

    @classmethod
    def load(cls, settings: Settings) -> CutoverState:
        path = _path(settings)
        if not path.exists():
            return cls()
        data = json.loads(path.read_text())
        record = data.get("record")
        return cls(
            phase=data.get("phase"),
            database=str(data.get("database", "")),
            prior=data.get("prior"),
            record=FreezeRecord.from_dict(record) if record else None,
        )

    def _save(self, settings: Settings) -> None:
        data = {
            "phase": self.phase,
            "database": self.database,
            "prior": self.prior,
            "record": self.record.to_dict() if self.record else None,
            "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        write_private(_path(settings), json.dumps(data, indent=2))

    def save_intent(self, settings: Settings, database: str, prior: str | None) -> None:
        self.phase, self.database, self.prior, self.record = FREEZING, database, prior, None
        self._save(settings)

    def save_frozen(self, settings: Settings, record: FreezeRecord) -> None:
        self.phase, self.database, self.prior, self.record = (
            FROZEN,
            record.database,
            record.prior_setting,
            record,
        )
        self._save(settings)

    def save_switched(self, settings: Settings) -> None:
        self.phase = SWITCHED
        self._save(settings)

    def save_rolled_back(self, settings: Settings) -> None:
        self.phase, self.record = ROLLED_BACK, None
        self._save(settings)

    def clear(self, settings: Settings) -> None:
        _path(settings).unlink(missing_ok=True)


# Source-vs-target comparisons of whole tables: a live application makes them differ until
# it is frozen, and the final delta runs them again before anything is switched.
RECHECKED_AFTER_FREEZE = frozenset({TABLE_ROW_COUNT, TABLE_CHECKSUM, FOREIGN_KEYS_INTACT})


def readiness_problems(instance: dg.DagsterInstance, setup: Setup) -> list[str]:
    """What the audit report calls unverified: every partition materialized with its slice
    checks, every schema, security and global check passed (none stale since its table
    last changed), bar the whole-table comparisons the final delta re-runs."""
    report = collect_report(instance, setup.plan, setup.plan_path, setup.settings.describe())
    return unverified(report, ignore=RECHECKED_AFTER_FREEZE)


@dataclass(frozen=True)
class Setup:
    """What each step of the cutover jobs works from: the settings the definitions were
    built with (the `settings` resource, a plain object never stored with a run) and their
    plan."""

    settings: Settings
    plan_path: Path
    plan: MigrationPlan

    @classmethod
    def load(cls, settings: Settings) -> Setup:
        path = settings.plan_path()
        return cls(settings, path, load_plan(path))

    @property
    def audit_dir(self) -> Path:
        self.settings.require("DAGSTER_HOME")
        assert self.settings.dagster_home is not None
        return self.settings.dagster_home / "audit"


EXIT_TAG = "exit"  # a step's failure metadata: the CLI's exit code for it (2: fix the setup)


def refusal(message: str, *, exit_code: int = 1) -> dg.Failure:
    """A step's failure as the CLI prints it, with the exit code it means."""
    return dg.Failure(description=message, metadata={EXIT_TAG: exit_code})


@contextmanager
def stays_frozen() -> Iterator[None]:
    """A final delta step that fails leaves the source frozen, and says what to do next."""
    try:
        yield
    except dg.Failure as exc:
        raise refusal(
            f"{(exc.description or 'the final delta failed').rstrip('.')}. The source stays "
            "frozen: fix and run cutover again, or `migration-assets cutover --rollback`"
        ) from None


def app_env_text(settings: Settings) -> str:
    """The application's settings after cutover: the transaction pooler with TLS verified
    against the CA, for the README's `make_app_engine(DATABASE_URL, DATABASE_SSLROOTCERT)`."""
    settings.require("SUPABASE_POOLER_URL", "SUPABASE_SSLROOTCERT")
    assert settings.supabase_pooler_url is not None
    params = parse_dsn(settings.supabase_pooler_url.get_secret_value())
    params["sslmode"] = "verify-full"
    params["sslrootcert"] = str(settings.sslrootcert)
    url = display_url(params, mask=False).replace("postgresql://", "postgresql+psycopg://", 1)
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return (
        f"# The application's database after cutover (migration-assets cutover, {now}).\n"
        "# Supabase's transaction pooler (port 6543): no prepared statements\n"
        "# (prepare_threshold=None), TLS verify-full against the CA. Holds a password: 0600.\n"
        f"DATABASE_URL={url}\n"
        f"DATABASE_SSLROOTCERT={settings.sslrootcert}\n"
        "DATABASE_SSLMODE=verify-full\n"
        "DATABASE_PREPARE_THRESHOLD=none\n"
    )


def write_app_env(settings: Settings, path: str | Path) -> Path:
    """0600 through a fresh file (it holds the pooler's password): a fixed temporary name
    could be one someone planted, and a reader must never see half of it."""
    return write_private(path, app_env_text(settings))
