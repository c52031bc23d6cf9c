"""Dagster wiring only: resources, assets, checks. Database work lives in `db`."""

import warnings

# Partitioned asset checks are a preview feature we rely on deliberately (per-slice proof);
# repeating that on every definitions load helps nobody.
warnings.filterwarnings("ignore", message=".*is currently in preview.*")
warnings.filterwarnings("ignore", message=".*is currently in beta.*")
