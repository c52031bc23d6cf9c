"""What the throwaway target and Dagster's storage look like: Supabase as far as it matters.

Roles (a non-superuser `postgres` that may set session_replication_role, the Data API
roles), Supabase's statement timeouts, its own schemas owned by another role, its default
grants on `public`; and the dagster.yaml of the stack's instance.
"""

from __future__ import annotations

from migration_assets.devstack.binaries import DevstackError
from migration_assets.devstack.cluster import LOOPBACK

DAGSTER_DB = "dagster"


# What a fresh Supabase project looks like to the `postgres` role, as far as it matters
# here: the role owns the database but is no superuser, may set session_replication_role,
# finds `extensions` on its search_path, and anything it creates in `public` is granted to the
# Data API roles by default.
# Statements are capped as on Supabase: two minutes for every role (TARGET_CONF), seconds
# for the API roles; a migration session must set its own limit or long slices fail.
TARGET_CONF = """
statement_timeout = '2min'
"""

TARGET_ROLES = """
CREATE ROLE anon NOLOGIN;
CREATE ROLE authenticated NOLOGIN;
CREATE ROLE service_role NOLOGIN BYPASSRLS;
ALTER ROLE anon SET statement_timeout = '3s';
ALTER ROLE authenticated SET statement_timeout = '8s';
CREATE ROLE {role} LOGIN NOSUPERUSER CREATEDB CREATEROLE BYPASSRLS PASSWORD {password};
GRANT SET ON PARAMETER session_replication_role TO {role};
ALTER ROLE {role} SET search_path TO "$user", public, extensions;
GRANT pg_read_all_stats TO {role};
"""

# Every target database (the default one and each test's) gets Supabase's own schemas,
# owned by another role: `auth` (users, and auth.uid() that RLS policies call), `storage`
# and `extensions` (pgcrypto; uuid-ossp would need libossp-uuid on the host). `postgres`
# may use `extensions` and call auth.uid(), but holds no privilege on the tables of `auth`
# or `storage`: a migration must leave them alone, and fails there as it would on Supabase.
TARGET_DATABASE = """
GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE {role} IN SCHEMA public
    GRANT ALL ON TABLES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE {role} IN SCHEMA public
    GRANT ALL ON SEQUENCES TO anon, authenticated, service_role;
CREATE SCHEMA extensions AUTHORIZATION {superuser};
CREATE EXTENSION pgcrypto SCHEMA extensions;
GRANT USAGE ON SCHEMA extensions TO {role}, anon, authenticated, service_role;
CREATE SCHEMA auth AUTHORIZATION {superuser};
CREATE TABLE auth.users (
    id uuid PRIMARY KEY DEFAULT extensions.gen_random_uuid(),
    email text,
    encrypted_password text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE
    AS $$ SELECT nullif(current_setting('request.jwt.claim.sub', true), '')::uuid $$;
GRANT USAGE ON SCHEMA auth TO {role}, anon, authenticated, service_role;
CREATE SCHEMA storage AUTHORIZATION {superuser};
CREATE TABLE storage.buckets (id text PRIMARY KEY, name text NOT NULL);
CREATE TABLE storage.objects (
    id uuid PRIMARY KEY DEFAULT extensions.gen_random_uuid(),
    bucket_id text REFERENCES storage.buckets (id),
    name text
);
GRANT USAGE ON SCHEMA storage TO {role}, anon, authenticated, service_role;
REVOKE ALL ON ALL TABLES IN SCHEMA auth, storage FROM PUBLIC, {role};
"""

# `concurrency` replaces the run coordinator's own limits (Dagster refuses both). Every step
# in the `supabase_target` pool (table slices, schema, sequences) waits for one of
# `default_limit` slots, so the target never sees more migration connections than that;
# `granularity: op` holds a slot only while a step runs, not while its run waits in the queue.
DAGSTER_YAML = """\
# Written by migration_assets.devstack: run and check history on PostgreSQL.
storage:
  postgres:
    postgres_db:
      username: {user}
      password:
        env: DAGSTER_PG_PASSWORD
      hostname: {host}
      db_name: {db}
      port: {port}
      scheme: postgresql+psycopg2
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    dequeue_interval_seconds: 1
concurrency:
  runs:
    max_concurrent_runs: {max_runs}
  pools:
    default_limit: {target_connections}
    granularity: op
telemetry:
  enabled: false
nux:
  enabled: false
# Steps log through the event log, never stdout; capturing stdout costs subprocesses per step.
compute_logs:
  module: dagster.core.storage.noop_compute_log_manager
  class: NoOpComputeLogManager
"""
DEFAULT_TARGET_CONNECTIONS = 4


def dagster_yaml(*, port: int, db: str = DAGSTER_DB, target_connections: int) -> str:
    """An instance on the stack's storage server whose pools allow `target_connections`."""
    if target_connections < 1:
        raise DevstackError("the target connection limit must be at least 1")
    return DAGSTER_YAML.format(
        user="dagster",
        host=LOOPBACK,
        db=db,
        port=port,
        max_runs=max(4, target_connections),
        target_connections=target_connections,
    )
