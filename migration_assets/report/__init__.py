"""The audit report as files: the keyed chain (`chain`) and its Markdown (`markdown`).

Imports nothing of ours but `migration_assets.private`: an auditor's copy of the report
rules can be read without the Dagster or database code.
"""

from migration_assets.report.chain import (
    REPORT_FORMAT,
    ChainCheck,
    PreparedReport,
    check_chain,
    compare_anchor,
    digest_of,
    prepare_report,
    report_key,
)
from migration_assets.report.markdown import render_markdown

__all__ = [
    "REPORT_FORMAT",
    "ChainCheck",
    "PreparedReport",
    "check_chain",
    "compare_anchor",
    "digest_of",
    "prepare_report",
    "render_markdown",
    "report_key",
]
