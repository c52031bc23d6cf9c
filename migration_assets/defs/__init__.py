"""Dagster wiring only: resources, assets, checks. Database work lives in `db`."""
