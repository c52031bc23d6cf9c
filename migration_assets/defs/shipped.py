"""Files the tool reads that live at the top of the repository, found wherever it runs from.

`alembic.ini` with `alembic/` (the clinic application's migrations: the demo's schema, and the
schema step's default) and `workspace.yaml` (the code location `migration-assets ui` serves)
stay beside the package in a checkout. A wheel has no checkout, so pyproject.toml ships them
inside the package, in `migration_assets/shipped/`: an installed package reads its own copy,
whatever the working directory; a checkout (editable install or not) reads the repository's.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]
SHIPPED = PACKAGE / "shipped"  # only in an installed wheel
CHECKOUT = PACKAGE.parent  # the repository, when the package runs from one


def shipped_file(name: str) -> Path:
    """`name` (`alembic.ini`, `workspace.yaml`) from the installed package, else the checkout."""
    return (SHIPPED if SHIPPED.is_dir() else CHECKOUT) / name
