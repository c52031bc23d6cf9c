"""Move a PostgreSQL database into Supabase as verified, resumable Dagster assets."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("migration_assets")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
