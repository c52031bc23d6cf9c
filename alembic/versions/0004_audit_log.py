"""Append-only audit log.

Revision ID: 0004
Revises: 0003
Create Date: 2025-01-27 09:00:00+00:00

Covers: inet, a BRIN index on an insert-ordered timestamp, and a trigger that rejects UPDATE
and DELETE, so history cannot be rewritten by the application. (A migration loading with
session_replication_role = replica does not fire it, which is what bulk loads need.)
"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the table, its indexes and the append-only guard."""
    op.execute(
        """
        CREATE TABLE public.audit_log (
            id          bigserial,
            occurred_at timestamptz NOT NULL DEFAULT now(),
            actor       text NOT NULL,
            action      text NOT NULL,
            entity      text NOT NULL,
            entity_id   text,
            details     jsonb,
            client_ip   inet,
            CONSTRAINT audit_log_pkey PRIMARY KEY (id)
        )
        """
    )
    op.execute("CREATE INDEX audit_log_entity_idx ON public.audit_log (entity, entity_id)")
    op.execute(
        "CREATE INDEX audit_log_occurred_at_brin ON public.audit_log USING brin (occurred_at)"
    )
    op.execute(
        """
        CREATE FUNCTION public.audit_log_append_only() RETURNS trigger
        LANGUAGE plpgsql
        SET search_path = ''
        AS $$
        BEGIN
            RAISE EXCEPTION 'audit_log is append-only: % is not allowed', TG_OP
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'Record a correcting entry instead.';
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER audit_log_append_only
        BEFORE UPDATE OR DELETE ON public.audit_log
        FOR EACH ROW EXECUTE FUNCTION public.audit_log_append_only()
        """
    )
    op.execute("COMMENT ON TABLE public.audit_log IS 'Who did what to which record; append-only.'")


def downgrade() -> None:
    """Drop the table (and with it the trigger), then the guard function."""
    op.execute("DROP TABLE public.audit_log")
    op.execute("DROP FUNCTION public.audit_log_append_only()")
