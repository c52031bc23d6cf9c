"""The seed's SQL: one INSERT ... SELECT per table, every value derived from md5 digests.

Generated in the database, not in Python: 10,000 patients seed in about a second. See
`seed.py` for how they are run and `vocabulary.py` for the lists values are picked from.
"""

from __future__ import annotations

from migration_assets.devstack.seed_fields import (
    ENC_HAS_RX,
    ENC_N_OBS,
    ENC_N_RX,
    ENC_ROWS,
    ENC_START_SECS,
    ENC_STATUS,
    EPOCH,
    MAX_PROVIDERS,
    MAX_ROWS,
    ONE_YEAR,
    PATIENT,
    PATIENT_ID,
    PATIENT_N_ENCOUNTERS,
    PATIENT_PROVIDER,
    PATIENT_ROWS,
    TEN_YEARS,
    Fields,
    at_seconds,
    hash_numbers,
    hash_rows,
    uuid_of,
)
from migration_assets.devstack.vocabulary import (
    ALLERGIES,
    APPOINTMENT_STATUSES,
    AUDIT_ACTIONS,
    AUDIT_ENTITIES,
    AUDIT_REASONS,
    CITIES,
    CREDENTIALS,
    DRUGS,
    DURATIONS,
    FAMILY_NAMES,
    FREQUENCIES,
    GIVEN_NAMES,
    IPV4_NETS,
    LOCATIONS,
    LOINC,
    MAX_SPAN,
    NOTE_SENTENCES,
    OBSERVATION_TEXTS,
    REASONS,
    ROUTES,
    SPECIALTIES,
    STREETS,
    TLDS,
    USER_AGENTS,
)

# --------------------------------------------------------------------------------------------
# Statements, in load order. Values travel as parameters; the SQL text is built from constants.

INSERT_LOINC = """
INSERT INTO reference.loinc_codes (code, display, unit)
SELECT code, display, unit
FROM unnest(%(loinc_code)s::text[], %(loinc_display)s::text[], %(loinc_unit)s::text[])
     AS c(code, display, unit)
"""

INSERT_ALIASES = """
INSERT INTO reference.code_aliases (alias, code)
SELECT alias, code FROM unnest(%(alias)s::text[], %(alias_code)s::text[]) AS c(alias, code)
"""


def _providers_sql() -> str:
    """Providers 1..P; supervisors have lower ids (a forest), the first few have none."""
    f = Fields("n0", "n1", "n2", "n3")
    specialty_pct, supervisor_pct, updated_pct = f.pct(), f.pct(), f.pct()
    created = at_seconds(f.num(3 * ONE_YEAR), "2012-01-01 00:00:00+00")
    npi_offset = "('x' || substr(md5(%(t_providers)s || 'npi'), 1, 8))::bit(32)::bigint"
    return f"""
INSERT INTO public.providers (id, npi, full_name, specialty, supervisor_id, created_at, updated_at)
SELECT
    i,
    -- 3^18 is coprime to 10^9, so i -> (i * 3^18 + offset) mod 10^9 is a permutation: unique.
    '9' || lpad(mod(i::bigint * 387420489 + {npi_offset}, 1000000000)::text, 9, '0'),
    {f.pick("given", GIVEN_NAMES)} || ' ' || {f.pick("family", FAMILY_NAMES)}
        || ', ' || {f.pick("credentials", CREDENTIALS)},
    CASE WHEN {specialty_pct} >= 5 THEN {f.pick("specialties", SPECIALTIES)} END,
    CASE WHEN i > greatest(3, %(providers)s / 20) AND {supervisor_pct} < 85
         THEN 1 + {f.num("i - 1", bound=MAX_PROVIDERS)} END,
    {created},
    {created} + make_interval(secs => CASE WHEN {updated_pct} < 40 THEN 0
                                           ELSE {f.num(TEN_YEARS)} END)
FROM {hash_rows("t_providers", "%(providers)s", hashes=2)} AS r
"""


def _patients_sql() -> str:
    """Patients 1..N with uuid ids; NULLs, unicode, arrays, jsonb and a few photos."""
    f = PATIENT
    sex, updated_pct, email_pct, phone_pct = f.pct(), f.pct(), f.pct(), f.pct()
    address_pct, allergy_pct, photo_pct = f.pct(), f.pct(), f.pct()
    created_secs = f.num(TEN_YEARS)
    created = at_seconds(created_secs)
    updated_after = f.num(f"{TEN_YEARS} - {created_secs}", bound=TEN_YEARS)  # stays in range
    first_allergy = f"1 + {f.num(len(ALLERGIES) - 2)}"
    # City and country are picked together, by one index.
    place = f"1 + {f.num(len(CITIES))}"
    return f"""
INSERT INTO public.patients (id, mrn, given_name, family_name, birth_date, sex, email, phone,
                             address, allergies, photo, primary_provider_id, created_at,
                             updated_at)
SELECT
    {PATIENT_ID},
    'MRN' || lpad(i::text, 8, '0'),
    {f.pick("given", GIVEN_NAMES)},
    {f.pick("family", FAMILY_NAMES)},
    date '1930-01-01' + {f.num(31046)}::int,
    CASE WHEN {sex} < 48 THEN 'female' WHEN {sex} < 96 THEN 'male'
         WHEN {sex} < 98 THEN 'other' WHEN {sex} < 99 THEN 'unknown' END,
    CASE WHEN {email_pct} < 85
         THEN 'patient' || i || '@example.' || {f.pick("tlds", TLDS)} END,
    CASE WHEN {phone_pct} < 90
         THEN '+1-' || (200 + {f.num(800)}) || '-555-01' || lpad({f.num(100)}::text, 2, '0') END,
    CASE WHEN {address_pct} >= 5 THEN
        jsonb_build_object(
            'line1', (1 + {f.num(999)}) || ' ' || {f.pick("streets", STREETS)},
            'city', (%(cities)s::text[])[{place}],
            'postal_code', lpad({f.num(100000)}::text, 5, '0'),
            'country', (%(countries)s::text[])[{place}])
        || CASE WHEN {address_pct} >= 80
                THEN jsonb_build_object('line2', 'Apt ' || (1 + {f.num(60)}))
                ELSE jsonb_build_object() END
    END,
    CASE WHEN {allergy_pct} < 30 THEN NULL
         WHEN {allergy_pct} < 70 THEN ARRAY[]::text[]
         ELSE (%(allergies)s::text[])[{first_allergy} : {first_allergy} + {f.num(3)}] END,
    CASE WHEN {photo_pct} < 2
         THEN '\\x89504e470d0a1a0a'::bytea || decode(repeat(h, (4 + {f.num(29)})::int), 'hex') END,
    {PATIENT_PROVIDER},
    {created},
    {created} + make_interval(secs => CASE WHEN {updated_pct} < 50 THEN 0
                                           ELSE {updated_after} END)
FROM {PATIENT_ROWS} AS r
"""


def _encounters_sql() -> str:
    """Encounters with dense ids: patient i owns ids enc_before+1 .. enc_before+n_enc.

    Observation ids are dense the same way (see _observations_sql), so an encounter can name
    its primary observation before that row exists; the deferred FK is checked at commit.
    """
    f = Fields("n2", "n3")  # encounter-only fields; n0 and n1 hold the shared ones (ENC)
    provider_pct, reason_pct, notes_pct, primary_pct = f.pct(), f.pct(), f.pct(), f.pct()
    started = at_seconds("start_secs")
    ended = f"{started} + make_interval(secs => 600 + 60 * {f.num(110)})"
    created = f"{started} - make_interval(secs => 3600 + {f.num(30 * 86400)})"
    sentence = f.pick("notes", NOTE_SENTENCES)
    repeats = f.num(100)
    return f"""
INSERT INTO public.encounters (id, patient_id, provider_id, status, started_at, ended_at, reason,
                               notes, primary_observation_id, created_at, updated_at)
SELECT
    enc,
    patient_id,
    CASE WHEN patient_provider IS NOT NULL AND {provider_pct} < 60 THEN patient_provider
         ELSE 1 + {f.num("%(providers)s", bound=MAX_PROVIDERS)} END,
    status,
    {started},
    CASE WHEN status = 'finished' THEN {ended} END,
    CASE WHEN {reason_pct} < 90 THEN {f.pick("reasons", REASONS)} END,
    CASE WHEN {notes_pct} < 25 THEN NULL
         WHEN {notes_pct} < 96 THEN {sentence}
         WHEN {notes_pct} < 99 THEN repeat({sentence} || E'\\n', (40 + {repeats})::int)
         ELSE 'Transcribed attachment:' || E'\\n' || (
             SELECT string_agg(md5(h || ':' || k), ' ' ORDER BY k)
             FROM generate_series(1, 60 + {repeats}) AS k)
    END,
    CASE WHEN status = 'finished' AND {primary_pct} < 60
         THEN obs_before + 1 + {f.num("n_obs", bound=4)} END,
    {created},
    CASE WHEN status = 'finished' THEN {ended} + interval '15 minutes' ELSE {created} END
FROM (
    SELECT x.*, {ENC_STATUS} AS status, {ENC_START_SECS} AS start_secs, {ENC_N_OBS} AS n_obs,
           sum({ENC_N_OBS}) OVER (ORDER BY enc) - {ENC_N_OBS} AS obs_before
    FROM (
        SELECT s.*, {hash_numbers("h", "h1")}
        FROM (
            SELECT s.*, md5(h || ':1') AS h1
            FROM (
                SELECT p.enc_before + j AS enc,
                       md5(%(t_encounters)s || (p.enc_before + j)) AS h,
                       p.patient_id, p.patient_provider
                FROM (
                    SELECT {PATIENT_ID} AS patient_id,
                           {PATIENT_PROVIDER} AS patient_provider,
                           {PATIENT_N_ENCOUNTERS} AS n_enc,
                           sum({PATIENT_N_ENCOUNTERS}) OVER (ORDER BY i)
                               - {PATIENT_N_ENCOUNTERS} AS enc_before
                    FROM {PATIENT_ROWS} AS r
                ) AS p
                CROSS JOIN LATERAL generate_series(1, p.n_enc) AS j
                OFFSET 0
            ) AS s
            OFFSET 0
        ) AS s
        OFFSET 0
    ) AS x
) AS y
"""


def _observations_sql() -> str:
    """1-4 observations per encounter, ids numbered in encounter order (dense)."""
    f = Fields("n0", "n1")
    code, missing, attachment_pct = f.num(len(LOINC)), f.pct(), f.pct()
    return f"""
INSERT INTO public.observations (id, encounter_id, code, value_numeric, unit, value_text,
                                 observed_at, attachment)
SELECT
    o.id,
    o.enc,
    c.code,
    CASE WHEN c.span IS NOT NULL AND {missing} >= 3
         THEN round((c.low + {f.num("c.span", bound=MAX_SPAN)})::numeric / c.divisor, c.scale)
    END,
    c.unit,
    CASE WHEN c.span IS NULL THEN {f.pick("obs_texts", OBSERVATION_TEXTS)}
         WHEN {missing} < 3 THEN 'not measured' END,
    {at_seconds(f"o.start_secs + 300 * (o.k - 1) + {f.num(300)}")},
    CASE WHEN {attachment_pct} < 1
         THEN '\\x255044462d312e340a'::bytea || decode(repeat(o.h, (2 + {f.num(15)})::int), 'hex')
    END
FROM (
    SELECT s.*, {hash_numbers("h")}
    FROM (
        SELECT x.obs_before + k AS id, x.enc, k, x.start_secs,
               md5(%(t_observations)s || (x.obs_before + k)) AS h
        FROM (
            SELECT enc, {ENC_N_OBS} AS n_obs, {ENC_START_SECS} AS start_secs,
                   sum({ENC_N_OBS}) OVER (ORDER BY enc) - {ENC_N_OBS} AS obs_before
            FROM {ENC_ROWS} AS r
        ) AS x
        CROSS JOIN LATERAL generate_series(1, x.n_obs) AS k
        OFFSET 0
    ) AS s
    OFFSET 0
) AS o
JOIN unnest(%(loinc_code)s::text[], %(loinc_unit)s::text[], %(loinc_low)s::bigint[],
            %(loinc_span)s::bigint[], %(loinc_divisor)s::bigint[], %(loinc_scale)s::int[])
     WITH ORDINALITY AS c(code, unit, low, span, divisor, scale, n)
  ON c.n = 1 + {code}
"""


def _prescriptions_sql() -> str:
    """1-4 lines (line_no 1..k) for 15% of finished encounters."""
    f = Fields("n0", "n1")
    drug = f"1 + {f.num(len(DRUGS))}"
    frequency = f.pick("frequencies", FREQUENCIES)
    details_pct, substitution_pct, instructions_pct = f.pct(), f.pct(), f.pct()
    note_pct, warnings_pct = f.pct(), f.pct()
    return f"""
INSERT INTO public.prescriptions (encounter_id, line_no, drug_name, dose, dose_unit, frequency,
                                  days_supply, refills, prescribed_on, details)
SELECT
    enc,
    line_no,
    (%(drugs)s::text[])[{drug}],
    (%(drug_doses)s::numeric[])[{drug}] * (ARRAY[0.5, 1, 1, 2])[1 + {f.num(4)}],
    (%(drug_units)s::text[])[{drug}],
    {frequency},
    CASE WHEN {frequency} <> 'as needed'
         THEN (ARRAY[7, 10, 14, 28, 30, 90])[1 + {f.num(6)}] END,
    {f.num(6)},
    date '{EPOCH[:10]}' + (start_secs / 86400)::int,
    CASE WHEN {details_pct} < 80 THEN jsonb_build_object(
        'route', {f.pick("routes", ROUTES)},
        'substitution_allowed', {substitution_pct} < 70,
        'instructions', CASE WHEN {instructions_pct} < 50 THEN 'Take with food.'
                             WHEN {instructions_pct} < 80 THEN 'Nicht mit Alkohol einnehmen.'
                             ELSE 'Prendre le matin, à jeun.' END,
        'pharmacy_note', CASE WHEN {note_pct} < 30 THEN to_jsonb('Call before pickup'::text)
                              ELSE 'null'::jsonb END,
        'warnings', CASE WHEN {warnings_pct} < 20 THEN jsonb_build_array('drowsiness', 'QT')
                         ELSE jsonb_build_array() END)
    END
FROM (
    SELECT s.*, {hash_numbers("h")}
    FROM (
        SELECT x.enc, x.start_secs, line_no,
               md5(%(t_prescriptions)s || x.enc || ':' || line_no) AS h
        FROM (
            SELECT enc, {ENC_START_SECS} AS start_secs, {ENC_N_RX} AS n_rx
            FROM {ENC_ROWS} AS r
            WHERE {ENC_HAS_RX}
        ) AS x
        CROSS JOIN LATERAL generate_series(1, x.n_rx) AS line_no
        OFFSET 0
    ) AS s
    OFFSET 0
) AS rx
"""


def _appointments_sql() -> str:
    """Appointment i: provider 1 + (i-1) mod P, that provider's slot (i-1) / P.

    Slots are 16 half-hours a day from 08:00 UTC, so (provider_id, starts_at) is unique by
    construction rather than by luck.
    """
    f = Fields("n0", "n1")
    patient = f.num("%(patients)s", bound=MAX_ROWS)
    location_pct = f.pct()
    slot = "(i - 1) / %(providers)s"
    starts_at = at_seconds(
        f"({slot} / 16) * 86400 + mod({slot}, 16) * 1800", "2024-01-01 08:00:00+00"
    )
    return f"""
INSERT INTO public.appointments (id, patient_id, provider_id, starts_at, duration, status,
                                 location, created_at)
SELECT
    {uuid_of("h")},
    {uuid_of("patient_h")},
    1 + mod(i - 1, %(providers)s),
    {starts_at},
    (%(durations)s::interval[])[1 + {f.num(len(DURATIONS))}],
    {f.pick("appointment_statuses", APPOINTMENT_STATUSES)},
    CASE WHEN {location_pct} < 90 THEN {f.pick("locations", LOCATIONS)} END,
    {starts_at} - make_interval(secs => 3600 + {f.num(60 * 86400)})
FROM (SELECT r.*, md5(%(t_patients)s || (1 + {patient})) AS patient_h
      FROM {hash_rows("t_appointments", "%(appointments)s")} AS r
      OFFSET 0) AS r
"""


def _audit_sql() -> str:
    """An append-only log: ids grow with time; system entries have no client IP."""
    f = Fields("n0", "n1", "n2", "n3")
    actor_pct, entity, target = f.pct(), f"1 + {f.num(len(AUDIT_ENTITIES))}", f.pct()
    details_pct, fields_pct, ip_pct = f.pct(), f.pct(), f.pct()
    row = f.num(MAX_ROWS)  # which patient, encounter, ... the entry is about (scaled below)
    # The hash naming a patient's or an appointment's uuid, computed once per row.
    target_h = f"""CASE {entity}
        WHEN 1 THEN md5(%(t_patients)s || (1 + mod({row}, %(patients)s)))
        WHEN 5 THEN md5(%(t_appointments)s || (1 + mod({row}, %(appointments)s))) END"""
    return f"""
INSERT INTO public.audit_log (id, occurred_at, actor, action, entity, entity_id, details,
                              client_ip)
SELECT
    i,
    {at_seconds(f"(i::bigint * {TEN_YEARS}) / %(audit)s + {f.num(60)}")},
    CASE WHEN {actor_pct} < 10 THEN 'system'
         ELSE 'provider/' || (1 + {f.num("%(providers)s", bound=MAX_PROVIDERS)}) END,
    CASE WHEN {actor_pct} < 10 THEN 'export' ELSE {f.pick("audit_actions", AUDIT_ACTIONS)} END,
    (%(audit_entities)s::text[])[{entity}],
    CASE WHEN {target} < 3 THEN NULL
         WHEN target_h IS NOT NULL THEN {uuid_of("target_h")}::text
         WHEN {entity} = 2 THEN (1 + mod({row}, %(encounters)s))::text
         WHEN {entity} = 3 THEN (1 + mod({row}, %(observations)s))::text
         ELSE (1 + mod({row}, %(encounters)s)) || '/1'
    END,
    CASE WHEN {details_pct} < 70 THEN jsonb_build_object(
        'request_id', substr(h, 17, 16),
        'user_agent', {f.pick("user_agents", USER_AGENTS)},
        'reason', {f.pick("audit_reasons", AUDIT_REASONS)},
        'fields', CASE WHEN {fields_pct} < 50 THEN jsonb_build_array('email', 'phone')
                       ELSE jsonb_build_array() END)
    END,
    CASE WHEN {actor_pct} < 10 THEN NULL
         WHEN {ip_pct} < 1 THEN '203.0.113.0/24'::inet
         WHEN {ip_pct} < 80
         THEN ({f.pick("ipv4_nets", IPV4_NETS)} || (1 + {f.num(254)}))::inet
         ELSE ('2001:db8:' || to_hex({f.num(65536)}) || '::' || to_hex(1 + {f.num(65535)}))::inet
    END
FROM (SELECT r.*, {target_h} AS target_h
      FROM {hash_rows("t_audit_log", "%(audit)s", hashes=2)} AS r
      OFFSET 0) AS r
"""


INSERT_PROVIDERS = _providers_sql()
INSERT_PATIENTS = _patients_sql()
INSERT_ENCOUNTERS = _encounters_sql()
INSERT_OBSERVATIONS = _observations_sql()
INSERT_PRESCRIPTIONS = _prescriptions_sql()
INSERT_APPOINTMENTS = _appointments_sql()
INSERT_AUDIT = _audit_sql()
