"""Headless Chromium for the tests that click through the Dagster UI, and the clicks they share.

Locally a missing browser skips those tests; in CI (MIGRATION_ASSETS_CI) it fails them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def required(ok: bool, what: str) -> None:
    """Locally a missing browser skips; in CI (MIGRATION_ASSETS_CI) it fails."""
    if ok:
        return
    if os.environ.get("MIGRATION_ASSETS_CI"):
        pytest.fail(f"{what} is required in CI (.ci/run installs it)")
    pytest.skip(f"{what} is not available")


@contextlib.contextmanager
def chromium_page() -> Iterator[Any]:
    """One page of a headless Chromium, closed on the way out."""
    required(CHROMIUM.is_file(), f"Chromium at {CHROMIUM} (Debian package `chromium`)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        required(False, "the Python package `playwright`")
        raise
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.set_default_timeout(30_000)
        try:
            yield page
        finally:
            browser.close()


def materialize_all_in_one_run(page: Any, url: str) -> None:
    """What an operator clicks when every table is one slice: Materialize all; the dialog
    offers the one partition key they share; All; Launch 1 run."""
    page.goto(f"{url}/asset-groups")
    page.get_by_role("button", name="Materialize all").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Launch runs to materialize").wait_for()
    dialog.get_by_role("button", name="All", exact=True).click()
    dialog.get_by_text("1 partition", exact=True).wait_for()
    dialog.get_by_role("button", name="Launch 1 run").click()
    dialog.wait_for(state="hidden")
