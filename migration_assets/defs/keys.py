"""Names in the graph: asset keys, check names, the target's pool. Users' scripts, the UI's
bookmarks and the audit report rely on them, so they are defined once, here."""

import dagster as dg

PREFLIGHT_KEY = dg.AssetKey("migration_preflight")
SCHEMA_KEY = dg.AssetKey("supabase_schema")
INDEXES_KEY = dg.AssetKey("supabase_indexes")
SEQUENCES_KEY = dg.AssetKey("supabase_sequences")
REPORT_KEY = dg.AssetKey("migration_audit_report")
CUTOVER_KEY = dg.AssetKey("migration_cutover")  # recorded by the cutover jobs only
# the job that, after a UI backfill, runs every whole-table check and writes the audit report
VERIFY_JOB = "verify_and_report"

KINDS = {"postgres", "supabase"}
# Every step that opens a connection to the target holds one slot of this pool while it
# runs: MIGRATION_TARGET_CONNECTIONS is its limit, in every way the graph is executed.
TARGET_POOL = "supabase_target"

SCHEMA_MATCHES_SOURCE = "schema_matches_source"
PLAN_MATCHES_SOURCE = "plan_matches_source"
DATA_API_LOCKED_DOWN = "data_api_locked_down"
TLS_IN_USE = "tls_in_use"
SLICE_ROW_COUNT = "slice_row_count"
SLICE_CHECKSUM = "slice_checksum"
TABLE_ROW_COUNT = "table_row_count"
TABLE_CHECKSUM = "table_checksum"
FOREIGN_KEYS_INTACT = "foreign_keys_intact"
RLS_ENABLED = "rls_enabled"
NO_API_GRANTS = "no_api_grants"
INDEXES_MATCH_SOURCE = "indexes_match_source"
SEQUENCES_AHEAD = "sequences_ahead_of_keys"
POOLER_READY = "pooler_ready"
REPORT_COMPLETE = "report_complete"
