"""The README's "Moving a real database" answers a newcomer's first three questions, and what
it names exists: every schema mode the settings accept, the setting names, the CA's origin,
the route from an IPv4-only network."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from migration_assets.settings import SETTING_NAMES, SchemaMode

pytestmark = pytest.mark.unit

README = Path(__file__).resolve().parents[1] / "README.md"


def _section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def test_choosing_the_schema_mode_is_a_table_of_every_mode() -> None:
    section = _section("Moving a real database")
    table = section[section.index("**Which schema mode**") :]
    rows = re.findall(r"^\| (.+?) \| (.+?) \|$", table, re.MULTILINE)
    modes = {m for _, cell in rows for m in re.findall(r"`(\w+)`", cell)}
    assert {mode.value for mode in SchemaMode} <= modes, rows
    assert "MIGRATION_ALEMBIC_CONFIG" in table


def test_the_ca_and_the_ipv4_route_are_said_where_a_newcomer_looks() -> None:
    section = " ".join(_section("Moving a real database").split())
    assert "prod-ca-2021.crt" in section
    assert "SSL Configuration" in section, "where in the dashboard the certificate is"
    ipv4 = section[section.index("**From an IPv4-only network**") :]
    assert "session pooler" in ipv4
    assert "6543" in ipv4, "and which pooler not to use for the migration"


def test_every_setting_the_section_names_exists() -> None:
    section = _section("Moving a real database")
    named = set(re.findall(r"`((?:SOURCE|SUPABASE|MIGRATION)_[A-Z_]+)`", section))
    assert {"MIGRATION_SCHEMA_MODE", "SUPABASE_SSLROOTCERT"} <= named
    unknown = named - set(SETTING_NAMES)
    assert not unknown, f"the README names settings that do not exist: {sorted(unknown)}"
