"""Settings and DSN handling: pure logic, no database."""

from __future__ import annotations

from pathlib import Path

import pytest

from migration_assets.db.dsn import (
    is_local_host,
    judge_target_tls,
    mask_dsn,
    parse_dsn,
    sqlalchemy_url,
    with_params,
)
from migration_assets.settings import SETTING_NAMES, SchemaMode, SettingsError, load_settings

pytestmark = pytest.mark.unit

SECRET = "s3cr3t-P@ss"
ENCODED = "s3cr3t-P%40ss"  # how a URL must carry it


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        (
            f"postgresql://app:{ENCODED}@db.example.com:5432/clinic",
            "postgresql://app:***@db.example.com:5432/clinic",
        ),
        (
            f"host=localhost user=app password={SECRET} dbname=clinic",
            "postgresql://app:***@localhost/clinic",
        ),
        ("postgresql://app@localhost/clinic", "postgresql://app@localhost/clinic"),
        (
            f"postgresql://app:{ENCODED}@h/db?sslmode=verify-full&sslrootcert=/ca.crt",
            "postgresql://app:***@h/db?sslmode=verify-full&sslrootcert=/ca.crt",
        ),
        ("not a dsn ::: ===", "<unparseable connection string>"),
        (f"postgresql://app:{SECRET}@h/db", "<unparseable connection string>"),
    ],
)
def test_mask_dsn_never_shows_the_password(dsn: str, shown: str) -> None:
    assert mask_dsn(dsn) == shown
    assert SECRET not in mask_dsn(dsn)


@pytest.mark.parametrize(
    ("host", "local"),
    [
        ("localhost", True),
        ("127.0.0.1", True),
        ("127.8.9.1", True),
        ("::1", True),
        ("/var/run/postgresql", True),
        ("", True),
        ("db.abc.supabase.co", False),
        ("10.0.0.5", False),
        ("2001:db8::1", False),
    ],
)
def test_is_local_host(host: str, local: bool) -> None:
    assert is_local_host(host) is local


def test_remote_target_needs_verify_full_and_a_ca() -> None:
    weak = judge_target_tls(
        "postgresql://u:p@db.x.supabase.co/postgres?sslmode=require",
        setting="SUPABASE_DB_URL",
        sslrootcert=None,
    )
    assert not weak.ok
    assert "sslmode=verify-full" in weak.problem
    assert "SUPABASE_SSLROOTCERT" in weak.problem
    no_ca = judge_target_tls(
        "postgresql://u:p@db.x.supabase.co/postgres?sslmode=verify-full",
        setting="SUPABASE_DB_URL",
        sslrootcert=None,
    )
    assert not no_ca.ok
    assert "CA certificate" in no_ca.problem
    good = judge_target_tls(
        "postgresql://u:p@db.x.supabase.co/postgres?sslmode=verify-full",
        setting="SUPABASE_DB_URL",
        sslrootcert="/ca.crt",
    )
    assert good.ok
    local = judge_target_tls("postgresql://u:p@localhost/postgres", setting="X", sslrootcert=None)
    assert local.ok


def test_a_hostaddr_that_leaves_the_machine_makes_a_target_non_local() -> None:
    """libpq connects to hostaddr; host only names the certificate."""
    verdict = judge_target_tls(
        "postgresql://u:p@localhost/postgres?hostaddr=203.0.113.5&sslmode=require",
        setting="SUPABASE_DB_URL",
        sslrootcert=None,
    )
    assert not verdict.ok
    assert "points at 203.0.113.5 with sslmode=require" in verdict.problem
    assert judge_target_tls(
        "postgresql://u:p@localhost/postgres?hostaddr=127.0.0.1", setting="X", sslrootcert=None
    ).ok


def test_with_params_keeps_what_the_dsn_says() -> None:
    out = parse_dsn(
        with_params(
            "postgresql://u@h/db?connect_timeout=3", connect_timeout="10", sslrootcert="/ca.crt"
        )
    )
    assert out["connect_timeout"] == "3"
    assert out["sslrootcert"] == "/ca.crt"


def test_sqlalchemy_url_round_trips_every_parameter() -> None:
    url = sqlalchemy_url(
        f"postgresql://a%40b:{ENCODED}@h:6000/db?sslmode=verify-full", sslrootcert="/ca.crt"
    )
    assert url.startswith("postgresql+psycopg://a%40b:")
    assert parse_dsn(url.replace("+psycopg", "")) == {
        "user": "a@b",
        "password": SECRET,
        "host": "h",
        "port": "6000",
        "dbname": "db",
        "sslmode": "verify-full",
        "sslrootcert": "/ca.crt",
    }


def test_unencoded_at_sign_in_a_password_is_refused_without_echoing_it(
    isolated_cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATABASE_URL", f"postgresql://app:{SECRET}@localhost/clinic")
    with pytest.raises(SettingsError) as caught:
        load_settings(env_file=None)
    assert "%40" in str(caught.value)
    assert "ss@localhost" not in str(caught.value)
    assert SECRET not in str(caught.value)


def test_missing_settings_are_listed_in_one_message(isolated_cwd: Path) -> None:
    settings = load_settings(env_file=None)
    with pytest.raises(SettingsError) as caught:
        settings.require("SOURCE_DATABASE_URL", "SUPABASE_DB_URL", "DAGSTER_HOME")
    text = str(caught.value)
    for name in ("SOURCE_DATABASE_URL", "SUPABASE_DB_URL", "DAGSTER_HOME"):
        assert name in text


def test_settings_come_from_a_dotenv_file(isolated_cwd: Path) -> None:
    (isolated_cwd / ".env").write_text(
        f"SOURCE_DATABASE_URL=postgresql://u:{ENCODED}@localhost/src\n"
        "MIGRATION_SCHEMA_MODE=pg_dump\n"
    )
    settings = load_settings()
    assert settings.source_dsn.endswith("/src")
    assert settings.migration_schema_mode is SchemaMode.PG_DUMP
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings.describe())


def test_unsafe_remote_target_is_refused_with_the_fix(
    isolated_cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(
        "SUPABASE_DB_URL", f"postgresql://postgres:{ENCODED}@db.abc.supabase.co:5432/postgres"
    )
    with pytest.raises(SettingsError) as caught:
        load_settings(env_file=None)
    text = str(caught.value)
    assert "sslmode=verify-full" in text
    assert SECRET not in text


@pytest.mark.parametrize("setting", ["SUPABASE_DB_URL", "SOURCE_DATABASE_URL"])
def test_transaction_pooler_is_refused_for_migration(
    setting: str, isolated_cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both sides of the migration need sessions of their own: a slice is read, verified and
    locked in one, which a transaction pooler would spread over several."""
    monkeypatch.setenv(setting, "postgresql://postgres:x@localhost:6543/postgres")
    with pytest.raises(SettingsError) as caught:
        load_settings(env_file=None)
    text = str(caught.value)
    assert f"{setting} uses port 6543, a transaction pooler" in text
    assert "session" in text.split("pooler", 1)[1]


def test_missing_ca_file_is_named(isolated_cwd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPABASE_SSLROOTCERT", str(isolated_cwd / "nope.crt"))
    with pytest.raises(SettingsError, match=r"nope\.crt"):
        load_settings(env_file=None)


def test_plan_option_overrides_the_setting(
    isolated_cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = isolated_cwd / "a.json", isolated_cwd / "b.json"
    a.write_text("{}")
    b.write_text("{}")
    monkeypatch.setenv("MIGRATION_PLAN", str(a))
    settings = load_settings(env_file=None)
    assert settings.plan_path() == a
    assert settings.plan_path(b) == b
    with pytest.raises(SettingsError, match="migration-assets plan"):
        settings.plan_path(isolated_cwd / "missing.json")


REMOTE_SOURCE = f"postgresql://app:{ENCODED}@clinic-db.example.org:5432/clinic"


@pytest.mark.parametrize(
    "url",
    [
        REMOTE_SOURCE,
        REMOTE_SOURCE + "?sslmode=require",
        REMOTE_SOURCE + "?sslmode=verify-ca",
        REMOTE_SOURCE + "?sslmode=verify-full",  # no CA anywhere
        f"postgresql://app:{ENCODED}@10.1.2.3/clinic?sslmode=disable",
        # the name is local, the address libpq connects to is not
        f"postgresql://app:{ENCODED}@localhost/clinic?hostaddr=10.1.2.3",
        f"host=localhost,db.example.org user=app password={SECRET} dbname=clinic",
    ],
    ids=["prefer", "require", "verify-ca", "no CA", "IP, disable", "hostaddr", "two hosts"],
)
def test_a_non_local_source_without_verified_tls_is_refused_naming_the_fix(
    url: str, isolated_cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every row crosses the network from a source on another host: as for the target,
    nothing less than verify-full with a CA, unless MIGRATION_SOURCE_TLS says otherwise."""
    monkeypatch.setenv("SOURCE_DATABASE_URL", url)
    with pytest.raises(SettingsError) as caught:
        load_settings(env_file=None)
    text = str(caught.value)
    assert "SOURCE_DATABASE_URL" in text
    assert "SOURCE_SSLROOTCERT" in text
    assert "MIGRATION_SOURCE_TLS=unverified" in text
    assert "SUPABASE_SSLROOTCERT" not in text, "the target's CA is not the source's"
    assert SECRET not in text


def test_a_non_local_source_is_accepted_verified_or_knowingly_unverified(
    isolated_cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = isolated_cwd / "clinic-ca.crt"
    ca.write_text("not parsed here\n")
    verify_full = REMOTE_SOURCE + "?sslmode=verify-full"
    monkeypatch.setenv("SOURCE_DATABASE_URL", verify_full)
    monkeypatch.setenv("SOURCE_SSLROOTCERT", str(ca))
    settings = load_settings(env_file=None)
    assert parse_dsn(settings.source_dsn)["sslrootcert"] == str(ca), "connections get the CA"
    assert settings.describe()["SOURCE_SSLROOTCERT"] == str(ca)
    assert settings.describe()["MIGRATION_SOURCE_TLS"] == "verify"
    monkeypatch.delenv("SOURCE_SSLROOTCERT")
    monkeypatch.setenv("SOURCE_DATABASE_URL", f"{verify_full}&sslrootcert={ca}")
    assert parse_dsn(load_settings(env_file=None).source_dsn)["sslrootcert"] == str(ca)
    monkeypatch.setenv("SOURCE_DATABASE_URL", REMOTE_SOURCE + "?sslmode=require")
    monkeypatch.setenv("MIGRATION_SOURCE_TLS", "unverified")
    assert load_settings(env_file=None).describe()["MIGRATION_SOURCE_TLS"] == "unverified"
    monkeypatch.setenv("MIGRATION_SOURCE_TLS", "none")
    with pytest.raises(SettingsError, match="MIGRATION_SOURCE_TLS"):
        load_settings(env_file=None)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:pw@localhost/clinic",
        "postgresql://app:pw@127.0.0.1:5433/clinic",
        "postgresql://app:pw@[::1]/clinic",
        "postgresql:///clinic?host=/var/run/postgresql",
    ],
)
def test_a_local_source_needs_no_tls(
    url: str, isolated_cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATABASE_URL", url)
    assert load_settings(env_file=None).describe()["MIGRATION_SOURCE_TLS"] == "verify"


def test_a_missing_source_ca_file_is_named(
    isolated_cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_SSLROOTCERT", str(isolated_cwd / "clinic.crt"))
    with pytest.raises(SettingsError, match=r"SOURCE_SSLROOTCERT=.*clinic\.crt"):
        load_settings(env_file=None)


def test_every_setting_but_the_secret_is_described(
    isolated_cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The audit report's configuration is `describe()`: a setting missing there is a
    setting an auditor cannot see (URLs are shown when set, masked)."""
    assert {"SOURCE_SSLROOTCERT", "MIGRATION_SOURCE_TLS"} <= set(SETTING_NAMES)
    monkeypatch.setenv("SOURCE_DATABASE_URL", "postgresql://app:pw@localhost/clinic")
    monkeypatch.setenv("SUPABASE_DB_URL", "postgresql://postgres:pw@localhost/postgres")
    monkeypatch.setenv("SUPABASE_POOLER_URL", "postgresql://postgres:pw@localhost:6543/postgres")
    described = load_settings(env_file=None).describe()
    assert set(described) == set(SETTING_NAMES) - {"MIGRATION_KEY_SECRET"}
