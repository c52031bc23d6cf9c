"""Prescriptions, appointments and the `reference` code tables.

Revision ID: 0003
Revises: 0002
Create Date: 2025-01-20 09:00:00+00:00

Covers: a composite primary key (prescriptions), interval, a CHECK-constrained status, a
multi-column unique constraint (appointments), a second schema, a cross-schema FK
(observations.code -> reference.loinc_codes) and a table without a primary key
(reference.code_aliases, where duplicate rows are legal), as legacy databases have.
"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create the reference schema first: observations gain an FK into it."""
    op.execute("CREATE SCHEMA reference")
    op.execute(
        """
        CREATE TABLE reference.loinc_codes (
            code    text NOT NULL,
            display text NOT NULL,
            unit    text,
            CONSTRAINT loinc_codes_pkey PRIMARY KEY (code)
        )
        """
    )
    op.execute(
        """
        CREATE TABLE reference.code_aliases (
            alias text NOT NULL,
            code  text NOT NULL
        )
        """
    )
    op.execute("CREATE INDEX code_aliases_alias_idx ON reference.code_aliases (alias)")
    op.execute(
        """
        ALTER TABLE public.observations
            ADD CONSTRAINT observations_code_fkey
            FOREIGN KEY (code) REFERENCES reference.loinc_codes (code)
        """
    )
    op.execute(
        """
        CREATE TABLE public.prescriptions (
            encounter_id  bigint NOT NULL,
            line_no       smallint NOT NULL,
            drug_name     text NOT NULL,
            dose          numeric(10, 3) NOT NULL,
            dose_unit     text NOT NULL,
            frequency     text NOT NULL,
            days_supply   integer,
            refills       smallint NOT NULL DEFAULT 0,
            prescribed_on date NOT NULL,
            details       jsonb,
            CONSTRAINT prescriptions_pkey PRIMARY KEY (encounter_id, line_no),
            CONSTRAINT prescriptions_line_no_check CHECK (line_no > 0),
            CONSTRAINT prescriptions_days_supply_check CHECK (days_supply > 0),
            CONSTRAINT prescriptions_refills_check CHECK (refills BETWEEN 0 AND 11),
            CONSTRAINT prescriptions_encounter_id_fkey FOREIGN KEY (encounter_id)
                REFERENCES public.encounters (id) ON DELETE CASCADE
        )
        """
    )
    op.execute("CREATE INDEX prescriptions_drug_name_idx ON public.prescriptions (drug_name)")
    op.execute(
        """
        CREATE TABLE public.appointments (
            id          uuid NOT NULL DEFAULT gen_random_uuid(),
            patient_id  uuid NOT NULL,
            provider_id bigint NOT NULL,
            starts_at   timestamptz NOT NULL,
            duration    interval NOT NULL DEFAULT interval '30 minutes',
            status      text NOT NULL DEFAULT 'booked',
            location    text,
            created_at  timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT appointments_pkey PRIMARY KEY (id),
            CONSTRAINT appointments_provider_id_starts_at_key UNIQUE (provider_id, starts_at),
            CONSTRAINT appointments_duration_check CHECK (duration > interval '0'),
            CONSTRAINT appointments_status_check CHECK (
                status IN ('booked', 'confirmed', 'checked_in', 'completed', 'cancelled', 'no_show')
            ),
            CONSTRAINT appointments_patient_id_fkey FOREIGN KEY (patient_id)
                REFERENCES public.patients (id) ON DELETE CASCADE,
            CONSTRAINT appointments_provider_id_fkey FOREIGN KEY (provider_id)
                REFERENCES public.providers (id)
        )
        """
    )
    op.execute("CREATE INDEX appointments_patient_id_idx ON public.appointments (patient_id)")


def downgrade() -> None:
    """Drop the tables, the cross-schema FK, then the now empty schema."""
    op.execute("DROP TABLE public.appointments")
    op.execute("DROP TABLE public.prescriptions")
    op.execute("ALTER TABLE public.observations DROP CONSTRAINT observations_code_fkey")
    op.execute("DROP TABLE reference.code_aliases, reference.loinc_codes")
    op.execute("DROP SCHEMA reference")
