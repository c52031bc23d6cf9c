"""Deterministic synthetic clinic data for an empty database at alembic head.

Every value is a pure function of ``(seed, table, row number)``: each row hashes
``md5('<seed>:<table>:<i>')`` inside PostgreSQL and slices its fields out of the hash bits.
No ``random()``, no ``now()``, no dependence on execution order, so the same ``patients`` and
``seed`` give byte-identical rows (ids included) on any server, which is what lets tests
compare a migrated target against a freshly seeded twin.

Rows are generated server-side with ``INSERT ... SELECT ... FROM generate_series(...)``, with
the tables' FKs and secondary indexes set aside during the load and restored (identically)
after it, as pg_restore does. On two cores: 10k patients in about a second, 1M patients
(13.3M rows in all) in about two minutes.

The FK cycle (encounters.primary_observation_id -> observations) is closed without an UPDATE:
encounters are inserted already pointing at observations that follow in the same transaction,
which the DEFERRABLE INITIALLY DEFERRED constraint allows. So no ``updated_at`` trigger fires
and no superuser-only ``session_replication_role`` is needed.

Data is synthetic: names are drawn from lists and recombined, e-mail domains are example.*,
phone numbers are in the fictional 555-01xx range, IPs come from documentation ranges and
NPIs start with 9 (real NPIs start with 1 or 2). Row values are never logged.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import sql

# --------------------------------------------------------------------------------------------
# Vocabularies. Order matters: values are picked by index, so editing a list changes the data.

GIVEN_NAMES = [
    "Zoë", "José", "Łukasz", "Ana", "Mateo", "Amélie", "Søren", "Aoife", "Chidi", "Hana",
    "Ingrid", "Jürgen", "Kenji", "Leilani", "Mohammed", "Nadia", "Olumide", "Priya", "Raúl",
    "Siobhán", "Tomás", "Uxía", "Wei", "Yara", "Ömer", "Émile", "Björn", "Noémie", "Ngozi",
    "Dmitri", "Fatima", "Eitan", "Linh", "Camille", "Kai", "Ava", "Liam", "Olivia", "Noah",
    "Maya", "D'Arcy", "Anne-Marie",
]  # fmt: skip
FAMILY_NAMES = [
    "Nguyễn", "王", "Müller", "Ørsted", "García", "O'Brien", "Kowalski", "Smith", "Johnson",
    "Okafor", "Tanaka", "Kim", "Dubois", "Rossi", "Novák", "Andersson", "Y\u0131lmaz",
    "Papadopoulos", "Cohen", "Haddad", "Silva", "Ivanova", "Schmidt", "Fernández", "Lefèvre",
    "van der Berg", "de la Cruz", "Smith-Jones", "李", "김", "Αλεξίου", "Иванов", "Åberg",
    "Nowak", "Brown", "Patel", "Singh", "Mendoza", "Ó Súilleabháin", "Þórsdóttir",
]  # fmt: skip
SPECIALTIES = [
    "Family medicine", "Internal medicine", "Pediatrics", "Cardiology", "Dermatology",
    "Endocrinology", "Neurology", "Obstetrics & gynecology", "Orthopedics", "Psychiatry",
    "Pulmonology", "Nephrology", "Geriatrics", "Sports medicine",
]  # fmt: skip
CREDENTIALS = ["MD", "DO", "NP", "PA-C", "MBBS", "Dr. med."]
STREETS = [
    "Main St", "Oak Ave", "Maple Rd", "Elm St", "Hauptstraße", "Rue de la Paix", "Calle Mayor",
    "Kungsgatan", "Via Roma", "Ulica Długa", "Øster Allé", "Cedar Ln", "Harbour View",
]  # fmt: skip
CITIES = [
    "Springfield", "Riverton", "Fairview", "München", "Lyon", "Sevilla", "Göteborg", "Kraków",
    "Aarhus", "Thessaloníki", "Cork", "Zürich", "Québec", "São Paulo", "Đà Nẵng",
]  # fmt: skip
# One country per city above.
COUNTRIES = [
    "US", "US", "US", "DE", "FR", "ES", "SE", "PL", "DK", "GR", "IE", "CH", "CA", "BR", "VN",
]  # fmt: skip
# A comma and double quotes inside elements test text[] quoting in COPY and dumps.
ALLERGIES = [
    "Penicillin", "Sulfonamides", "Latex", "Peanuts", "Shellfish", "Bee stings", "Aspirin",
    "Ibuprofen", "Codeine", "Eggs", "Soy", "Pollen, grass", 'Cat "dander"', "Nickel",
    "Contrast dye", "Tree nuts",
]  # fmt: skip
REASONS = [
    "Annual physical", "Follow-up", "Hypertension review", "Diabetes check", "Cough and fever",
    "Back pain", "Rash", "Medication refill", "Vaccination", "Headache", "Prenatal visit",
    "Anxiety", "Chest pain — ruled out ACS", "Sprained ankle", "Lab review", "Ear pain",
]  # fmt: skip
# Tabs, newlines, backslashes and non-ASCII text exercise every escaping layer.
NOTE_SENTENCES = [
    "Patient reports feeling well. No acute distress.",
    "Pain 6/10, improved since last visit; continue current plan.",
    "BP elevated at triage, repeat reading normal.\nAdvised home monitoring.",
    "Temp 38.2 °C, throat erythematous. Rapid strep negative.",
    "Discussed diet and exercise.\tFollow-up in 3 months.",
    "Scan saved to share \\\\imaging\\2023\\ (legacy path).",
    "Patientin berichtet über Schwindel — keine Synkope.",
    "Le patient se plaint de fatigue ; bilan sanguin prescrit.",
    "Refused flu vaccine; counselled. Will reconsider.",
    "Wound healing well, sutures removed. ✔",
    "Interpreter used (Tiếng Việt). Patient understood instructions.",
    'Quote from patient: "I can\'t sleep more than 4 hours".',
]
DRUGS = [
    "Amoxicillin", "Lisinopril", "Metformin", "Atorvastatin", "Levothyroxine", "Salbutamol",
    "Insulin glargine", "Ibuprofen", "Paracetamol", "Omeprazole", "Sertraline", "Amlodipine",
    "Prednisolone", "Colecalciferol", "Lactulose", "Warfarin", "Digoxin",
]  # fmt: skip
DRUG_UNITS = [
    "mg", "mg", "mg", "mg", "mcg", "mcg", "units", "mg", "mg", "mg", "mg", "mg", "mg", "IU",
    "mL", "mg", "mg",
]  # fmt: skip
DRUG_DOSES = [Decimal(d) for d in (
    "500", "10", "850", "20", "50", "100", "12", "400", "1000", "20", "50", "5", "5", "1000",
    "15", "2.5", "0.125",
)]  # fmt: skip
FREQUENCIES = ["once daily", "twice daily", "three times daily", "every 8 hours", "at night",
               "as needed", "weekly"]  # fmt: skip
TLDS = ["org", "com", "net"]
ROUTES = ["oral", "oral", "oral", "inhaled", "subcutaneous", "topical"]
APPOINTMENT_STATUSES = ["booked", "confirmed", "checked_in", "completed", "cancelled", "no_show"]
DURATIONS = ["15 minutes", "20 minutes", "30 minutes", "45 minutes", "1 hour", "1 hour 30 minutes",
             "2 hours"]  # fmt: skip
LOCATIONS = ["Room 101", "Room 102", "Room 204", "Telehealth", "Clinic Nord — Raum 2",
             "Annex B", "Urgent care bay 3"]  # fmt: skip
AUDIT_ACTIONS = ["read", "read", "read", "read", "read", "read", "read", "read", "read", "read",
                 "read", "update", "update", "update", "update", "create", "create", "create",
                 "login", "export"]  # fmt: skip
assert len(COUNTRIES) == len(CITIES)
assert len(DRUGS) == len(DRUG_UNITS) == len(DRUG_DOSES)
AUDIT_ENTITIES = ["patient", "encounter", "observation", "prescription", "appointment"]
AUDIT_REASONS = ["treatment", "billing", "operations", "patient request"]
IPV4_NETS = ["192.0.2.", "198.51.100.", "203.0.113."]  # documentation ranges (RFC 5737)
USER_AGENTS = ["ClinicApp/2.3 (iOS 17.4)", "ClinicApp/2.3 (Android 14)",
               "Mozilla/5.0 (X11; Linux x86_64) Firefox/124.0", "clinic-batch/1.0"]  # fmt: skip

# LOINC codes (public terminology, not personal data): code, display, unit, and for synthetic
# numeric values (low, high, decimals); None for text-valued codes.
LOINC: list[tuple[str, str, str | None, tuple[int, int, int] | None]] = [
    ("8867-4", "Heart rate", "/min", (48, 130, 0)),
    ("8480-6", "Systolic blood pressure", "mm[Hg]", (90, 190, 0)),
    ("8462-4", "Diastolic blood pressure", "mm[Hg]", (50, 120, 0)),
    ("8310-5", "Body temperature", "Cel", (35, 40, 1)),
    ("29463-7", "Body weight", "kg", (3, 160, 1)),
    ("8302-2", "Body height", "cm", (50, 200, 1)),
    ("39156-5", "Body mass index", "kg/m2", (14, 45, 2)),
    ("9279-1", "Respiratory rate", "/min", (10, 30, 0)),
    ("59408-5", "Oxygen saturation by pulse oximetry", "%", (85, 100, 0)),
    ("2339-0", "Glucose [Mass/volume] in Blood", "mg/dL", (60, 300, 0)),
    ("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", (4, 13, 1)),
    ("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", (120, 320, 0)),
    ("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", (8, 18, 1)),
    ("6690-2", "Leukocytes [#/volume] in Blood", "10*3/uL", (2, 20, 2)),
    ("777-3", "Platelets [#/volume] in Blood", "10*3/uL", (100, 450, 0)),
    ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", (0, 5, 3)),
    ("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", (128, 150, 0)),
    ("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", (3, 6, 1)),
    ("1742-6", "Alanine aminotransferase [Enzymatic activity/volume]", "U/L", (5, 200, 0)),
    ("3016-3", "Thyrotropin [Units/volume] in Serum or Plasma", "m[IU]/L", (0, 10, 4)),
    ("72166-2", "Tobacco smoking status", None, None),
    ("11331-6", "History of alcohol use", None, None),
    ("8693-4", "Mental status", None, None),
]


def _loinc_values() -> dict[str, list[int | None]]:
    """Per code: a value is (low + k) / divisor rounded to scale, k in 0..span-1."""
    values: dict[str, list[int | None]] = {"low": [], "span": [], "divisor": [], "scale": []}
    for *_, value_range in LOINC:
        low, high, scale = value_range if value_range is not None else (0, 0, 0)
        numeric = value_range is not None
        values["low"].append(low * 10**scale if numeric else None)
        values["span"].append((high - low) * 10**scale + 1 if numeric else None)
        values["divisor"].append(10**scale)
        values["scale"].append(scale)
    return values


MAX_SPAN = max(span for span in _loinc_values()["span"] if span is not None)
OBSERVATION_TEXTS = [
    "Never smoker", "Former smoker", "Current every day smoker", "Denies alcohol use",
    "Social drinker", "Alert and oriented \N{MULTIPLICATION SIGN}3", "Mild cognitive impairment",
    "Declined to answer",
]  # fmt: skip
# Aliases for the table without a primary key; two pairs repeat on purpose (legal there).
CODE_ALIASES = [
    ("HR", "8867-4"), ("Pulse", "8867-4"), ("pulse rate", "8867-4"), ("SBP", "8480-6"),
    ("BP sys", "8480-6"), ("DBP", "8462-4"), ("Temp", "8310-5"), ("Körpertemperatur", "8310-5"),
    ("Weight", "29463-7"), ("Wt", "29463-7"), ("Poids", "29463-7"), ("Height", "8302-2"),
    ("BMI", "39156-5"), ("RR", "9279-1"), ("SpO2", "59408-5"), ("Glucose", "2339-0"),
    ("A1c", "4548-4"), ("HbA1c", "4548-4"), ("Chol", "2093-3"), ("Hgb", "718-7"),
    ("WBC", "6690-2"), ("PLT", "777-3"), ("Creat", "2160-0"), ("Na", "2951-2"),
    ("K", "2823-3"), ("ALT", "1742-6"), ("TSH", "3016-3"), ("Smoking", "72166-2"),
    ("HR", "8867-4"), ("A1c", "4548-4"),
]  # fmt: skip

# Tables in load order with their serial/identity column, if any (sequences are set to max).
TABLES: list[tuple[str, str | None]] = [
    ("reference.loinc_codes", None),
    ("reference.code_aliases", None),
    ("public.providers", "id"),
    ("public.patients", None),
    ("public.encounters", "id"),
    ("public.observations", "id"),
    ("public.prescriptions", None),
    ("public.appointments", None),
    ("public.audit_log", "id"),
]

# --------------------------------------------------------------------------------------------
# Hash fields. A row's md5 digests are read as 60-bit numbers: n0, n1 from `h`, n2, n3 from `h1`
# (h1 = md5(h || ':1')), and so on. `_Fields` hands out independent digits of those numbers in
# order of use, so no field is correlated with another or with the row's id.
# Each layer of a statement ends in OFFSET 0: that stops the planner from inlining md5() into
# every expression that reads a number, so each hash is computed once per row.

MAX_PROVIDERS = 400
MAX_ROWS = 1 << 30  # upper bound of a row-number field (a patient, an encounter, ...)
TEN_YEARS = 315_360_000  # seconds
ONE_YEAR = 31_536_000
EPOCH = "2015-01-01 00:00:00+00"


class _Fields:
    """Independent fields of a row's hash numbers, handed out in order of use.

    A field in 0..n-1 is the next mixed-radix digit: mod(number / (sizes before it), n). It is
    uniform while at least 2^8 of headroom is left, so a number is retired before that.
    Changing the order of allocation changes the data (deterministically), not its shape.
    """

    _LIMIT = 1 << 52

    def __init__(self, *numbers: str) -> None:
        self._numbers = numbers
        self._index = 0
        self._used = 1

    def num(self, n: int | str, bound: int | None = None) -> str:
        """SQL for a field in 0..n-1; `bound` is the largest n when n is an SQL expression."""
        size = n if bound is None else bound
        if not isinstance(size, int) or size < 1:
            raise TypeError("a field needs an integer size (pass bound= for SQL sizes)")
        if self._used * size > self._LIMIT:
            self._index += 1
            self._used = 1
            if self._index == len(self._numbers):
                raise ValueError("hash exhausted: give the statement another hash")
        var = self._numbers[self._index]
        expr = f"mod({var}, {n})" if self._used == 1 else f"mod({var} / {self._used}, {n})"
        self._used *= size
        return expr

    def pct(self) -> str:
        """A field in 0..99, for "in p percent of rows"."""
        return self.num(100)

    def pick(self, param: str, values: Sequence[object]) -> str:
        """An element of the list `values`, bound as the text[] parameter `param`."""
        return f"(%({param})s::text[])[1 + {self.num(len(values))}]"


def _numbers(*hashes: str) -> str:
    """Select-list items reading each hex digest as two 60-bit numbers: n0, n1, then n2, ..."""
    names = (f"n{k}" for k in range(2 * len(hashes)))
    return ", ".join(
        f"('x' || substr({h}, {start}, 15))::bit(60)::bigint AS {next(names)}"
        for h in hashes
        for start in (1, 16)
    )


def _rows(tag: str, count: str, hashes: int = 1, index: str = "i") -> str:
    """FROM item: `index` = 1..count with h = md5('<seed>:<table>:' || index) and numbers."""
    extra = "".join(f", md5(h || ':{k}') AS h{k}" for k in range(1, hashes))
    numbers = _numbers("h", *(f"h{k}" for k in range(1, hashes)))
    return f"""(
        SELECT s.*, {numbers}
        FROM (SELECT s.*{extra}
              FROM (SELECT {index}, md5(%({tag})s || {index}) AS h
                    FROM generate_series(1, {count}) AS {index} OFFSET 0) AS s
              OFFSET 0) AS s
        OFFSET 0)"""


def _uuid(h: str) -> str:
    """A version-4-shaped uuid from the 32 hex digits of `h`."""
    return (
        f"(substr({h}, 1, 12) || '4' || substr({h}, 14, 3)"
        f" || substr('89ab', 1 + mod(('x' || substr({h}, 17, 1))::bit(4)::int, 4), 1)"
        f" || substr({h}, 18, 15))::uuid"
    )


def _at(seconds: str, base: str = EPOCH) -> str:
    """`base` plus whole seconds: unlike days or months, seconds never depend on TimeZone."""
    return f"(timestamptz '{base}' + make_interval(secs => {seconds}))"


# Shared by every statement that needs a patient: its uuid, primary provider, encounter count.
# Fields come from h1..h3 only: h is the uuid, so uuid-range slices stay uncorrelated.
_PATIENT = _Fields("n2", "n3", "n4", "n5", "n6", "n7")
_PATIENT_ROWS = _rows("t_patients", "%(patients)s", hashes=4)
_PATIENT_ID = _uuid("h")
_PATIENT_PROVIDER = (
    f"CASE WHEN {_PATIENT.pct()} < 85"
    f" THEN 1 + {_PATIENT.num('%(providers)s', bound=MAX_PROVIDERS)} END"
)
_PATIENT_N_ENCOUNTERS = f"(1 + {_PATIENT.num(5)})"

# Shared by every statement that needs an encounter, read from its n0, n1 only (the encounter
# statement itself adds n2, n3 for the fields nothing else needs).
_ENC = _Fields("n0", "n1")
_ENC_ROWS = _rows("t_encounters", "%(encounters)s", index="enc")
_ENC_N_OBS = f"(1 + {_ENC.num(4)})"
_ENC_STATUS_PCT = _ENC.pct()
_ENC_FINISHED = f"({_ENC_STATUS_PCT} < 70)"
_ENC_STATUS = f"""(CASE
        WHEN {_ENC_STATUS_PCT} < 70 THEN 'finished'
        WHEN {_ENC_STATUS_PCT} < 78 THEN 'cancelled'
        WHEN {_ENC_STATUS_PCT} < 84 THEN 'no_show'
        WHEN {_ENC_STATUS_PCT} < 92 THEN 'planned'
        WHEN {_ENC_STATUS_PCT} < 95 THEN 'arrived'
        ELSE 'in_progress' END)::public.encounter_status"""
# Seconds after EPOCH: visits span ten years (2015-2024); planned ones lie in the year after.
_ENC_START_SECS = f"""(CASE WHEN {_ENC_STATUS_PCT} BETWEEN 84 AND 91
        THEN {TEN_YEARS} + {_ENC.num(ONE_YEAR)}
        ELSE {_ENC.num(TEN_YEARS)} END)"""
_ENC_HAS_RX = f"({_ENC_FINISHED} AND {_ENC.pct()} < 15)"
_ENC_N_RX = f"(1 + {_ENC.num(4)})"


# --------------------------------------------------------------------------------------------
# Statements, in load order. Values travel as parameters; the SQL text is built from constants.

_INSERT_LOINC = """
INSERT INTO reference.loinc_codes (code, display, unit)
SELECT code, display, unit
FROM unnest(%(loinc_code)s::text[], %(loinc_display)s::text[], %(loinc_unit)s::text[])
     AS c(code, display, unit)
"""

_INSERT_ALIASES = """
INSERT INTO reference.code_aliases (alias, code)
SELECT alias, code FROM unnest(%(alias)s::text[], %(alias_code)s::text[]) AS c(alias, code)
"""


def _providers_sql() -> str:
    """Providers 1..P; supervisors have lower ids (a forest), the first few have none."""
    f = _Fields("n0", "n1", "n2", "n3")
    specialty_pct, supervisor_pct, updated_pct = f.pct(), f.pct(), f.pct()
    created = _at(f.num(3 * ONE_YEAR), "2012-01-01 00:00:00+00")
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
FROM {_rows("t_providers", "%(providers)s", hashes=2)} AS r
"""


def _patients_sql() -> str:
    """Patients 1..N with uuid ids; NULLs, unicode, arrays, jsonb and a few photos."""
    f = _PATIENT
    sex, updated_pct, email_pct, phone_pct = f.pct(), f.pct(), f.pct(), f.pct()
    address_pct, allergy_pct, photo_pct = f.pct(), f.pct(), f.pct()
    created_secs = f.num(TEN_YEARS)
    created = _at(created_secs)
    updated_after = f.num(f"{TEN_YEARS} - {created_secs}", bound=TEN_YEARS)  # stays in range
    first_allergy = f"1 + {f.num(len(ALLERGIES) - 2)}"
    # City and country are picked together, by one index.
    place = f"1 + {f.num(len(CITIES))}"
    return f"""
INSERT INTO public.patients (id, mrn, given_name, family_name, birth_date, sex, email, phone,
                             address, allergies, photo, primary_provider_id, created_at,
                             updated_at)
SELECT
    {_PATIENT_ID},
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
    {_PATIENT_PROVIDER},
    {created},
    {created} + make_interval(secs => CASE WHEN {updated_pct} < 50 THEN 0
                                           ELSE {updated_after} END)
FROM {_PATIENT_ROWS} AS r
"""


def _encounters_sql() -> str:
    """Encounters with dense ids: patient i owns ids enc_before+1 .. enc_before+n_enc.

    Observation ids are dense the same way (see _observations_sql), so an encounter can name
    its primary observation before that row exists; the deferred FK is checked at commit.
    """
    f = _Fields("n2", "n3")  # encounter-only fields; n0 and n1 hold the shared ones (_ENC)
    provider_pct, reason_pct, notes_pct, primary_pct = f.pct(), f.pct(), f.pct(), f.pct()
    started = _at("start_secs")
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
    SELECT x.*, {_ENC_STATUS} AS status, {_ENC_START_SECS} AS start_secs, {_ENC_N_OBS} AS n_obs,
           sum({_ENC_N_OBS}) OVER (ORDER BY enc) - {_ENC_N_OBS} AS obs_before
    FROM (
        SELECT s.*, {_numbers("h", "h1")}
        FROM (
            SELECT s.*, md5(h || ':1') AS h1
            FROM (
                SELECT p.enc_before + j AS enc,
                       md5(%(t_encounters)s || (p.enc_before + j)) AS h,
                       p.patient_id, p.patient_provider
                FROM (
                    SELECT {_PATIENT_ID} AS patient_id,
                           {_PATIENT_PROVIDER} AS patient_provider,
                           {_PATIENT_N_ENCOUNTERS} AS n_enc,
                           sum({_PATIENT_N_ENCOUNTERS}) OVER (ORDER BY i)
                               - {_PATIENT_N_ENCOUNTERS} AS enc_before
                    FROM {_PATIENT_ROWS} AS r
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
    f = _Fields("n0", "n1")
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
    {_at(f"o.start_secs + 300 * (o.k - 1) + {f.num(300)}")},
    CASE WHEN {attachment_pct} < 1
         THEN '\\x255044462d312e340a'::bytea || decode(repeat(o.h, (2 + {f.num(15)})::int), 'hex')
    END
FROM (
    SELECT s.*, {_numbers("h")}
    FROM (
        SELECT x.obs_before + k AS id, x.enc, k, x.start_secs,
               md5(%(t_observations)s || (x.obs_before + k)) AS h
        FROM (
            SELECT enc, {_ENC_N_OBS} AS n_obs, {_ENC_START_SECS} AS start_secs,
                   sum({_ENC_N_OBS}) OVER (ORDER BY enc) - {_ENC_N_OBS} AS obs_before
            FROM {_ENC_ROWS} AS r
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
    f = _Fields("n0", "n1")
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
    SELECT s.*, {_numbers("h")}
    FROM (
        SELECT x.enc, x.start_secs, line_no,
               md5(%(t_prescriptions)s || x.enc || ':' || line_no) AS h
        FROM (
            SELECT enc, {_ENC_START_SECS} AS start_secs, {_ENC_N_RX} AS n_rx
            FROM {_ENC_ROWS} AS r
            WHERE {_ENC_HAS_RX}
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
    f = _Fields("n0", "n1")
    patient = f.num("%(patients)s", bound=MAX_ROWS)
    location_pct = f.pct()
    slot = "(i - 1) / %(providers)s"
    starts_at = _at(f"({slot} / 16) * 86400 + mod({slot}, 16) * 1800", "2024-01-01 08:00:00+00")
    return f"""
INSERT INTO public.appointments (id, patient_id, provider_id, starts_at, duration, status,
                                 location, created_at)
SELECT
    {_uuid("h")},
    {_uuid("patient_h")},
    1 + mod(i - 1, %(providers)s),
    {starts_at},
    (%(durations)s::interval[])[1 + {f.num(len(DURATIONS))}],
    {f.pick("appointment_statuses", APPOINTMENT_STATUSES)},
    CASE WHEN {location_pct} < 90 THEN {f.pick("locations", LOCATIONS)} END,
    {starts_at} - make_interval(secs => 3600 + {f.num(60 * 86400)})
FROM (SELECT r.*, md5(%(t_patients)s || (1 + {patient})) AS patient_h
      FROM {_rows("t_appointments", "%(appointments)s")} AS r
      OFFSET 0) AS r
"""


def _audit_sql() -> str:
    """An append-only log: ids grow with time; system entries have no client IP."""
    f = _Fields("n0", "n1", "n2", "n3")
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
    {_at(f"(i::bigint * {TEN_YEARS}) / %(audit)s + {f.num(60)}")},
    CASE WHEN {actor_pct} < 10 THEN 'system'
         ELSE 'provider/' || (1 + {f.num("%(providers)s", bound=MAX_PROVIDERS)}) END,
    CASE WHEN {actor_pct} < 10 THEN 'export' ELSE {f.pick("audit_actions", AUDIT_ACTIONS)} END,
    (%(audit_entities)s::text[])[{entity}],
    CASE WHEN {target} < 3 THEN NULL
         WHEN target_h IS NOT NULL THEN {_uuid("target_h")}::text
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
      FROM {_rows("t_audit_log", "%(audit)s", hashes=2)} AS r
      OFFSET 0) AS r
"""


_INSERT_PROVIDERS = _providers_sql()
_INSERT_PATIENTS = _patients_sql()
_INSERT_ENCOUNTERS = _encounters_sql()
_INSERT_OBSERVATIONS = _observations_sql()
_INSERT_PRESCRIPTIONS = _prescriptions_sql()
_INSERT_APPOINTMENTS = _appointments_sql()
_INSERT_AUDIT = _audit_sql()


def plan_sizes(patients: int) -> dict[str, int]:
    """Row-count drivers derived from the patient count (encounters follow from hashes)."""
    return {
        "patients": patients,
        "providers": min(400, max(20, patients // 40)),
        "appointments": patients // 2,
        "audit": patients // 2,
    }


def _params(seed: int, patients: int) -> dict[str, Any]:
    """Every value the statements bind: sizes, hash prefixes and vocabularies."""
    tags = {
        f"t_{name}": f"{seed}:{name}:"
        for name in (
            "providers",
            "patients",
            "encounters",
            "observations",
            "prescriptions",
            "appointments",
            "audit_log",
        )
    }
    return {
        **plan_sizes(patients),
        **tags,
        "encounters": 0,  # both filled in as the rows are inserted
        "observations": 0,
        "given": GIVEN_NAMES,
        "family": FAMILY_NAMES,
        "credentials": CREDENTIALS,
        "specialties": SPECIALTIES,
        "tlds": TLDS,
        "streets": STREETS,
        "cities": CITIES,
        "countries": COUNTRIES,
        "allergies": ALLERGIES,
        "reasons": REASONS,
        "notes": NOTE_SENTENCES,
        "obs_texts": OBSERVATION_TEXTS,
        "loinc_code": [c[0] for c in LOINC],
        "loinc_display": [c[1] for c in LOINC],
        "loinc_unit": [c[2] for c in LOINC],
        **{f"loinc_{key}": values for key, values in _loinc_values().items()},
        "alias": [a for a, _ in CODE_ALIASES],
        "alias_code": [c for _, c in CODE_ALIASES],
        "drugs": DRUGS,
        "drug_units": DRUG_UNITS,
        "drug_doses": DRUG_DOSES,
        "frequencies": FREQUENCIES,
        "routes": ROUTES,
        "appointment_statuses": APPOINTMENT_STATUSES,
        "durations": DURATIONS,
        "locations": LOCATIONS,
        "audit_actions": AUDIT_ACTIONS,
        "audit_entities": AUDIT_ENTITIES,
        "user_agents": USER_AGENTS,
        "audit_reasons": AUDIT_REASONS,
        "ipv4_nets": IPV4_NETS,
    }


def _check_empty(cur: psycopg.Cursor[Any]) -> None:
    """Refuse to run unless every table exists (alembic head) and holds no rows."""
    for table, _ in TABLES:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
        row = cur.fetchone()
        if row is None or not row[0]:
            raise RuntimeError(f"{table} does not exist: run `alembic upgrade head` first")
        schema, name = table.split(".")
        cur.execute(sql.SQL("SELECT EXISTS (SELECT FROM {})").format(sql.Identifier(schema, name)))
        row = cur.fetchone()
        if row is not None and row[0]:
            raise RuntimeError(f"{table} already has rows: seed expects an empty database")


_STEPS = [
    ("reference.loinc_codes", _INSERT_LOINC),
    ("reference.code_aliases", _INSERT_ALIASES),
    ("public.providers", _INSERT_PROVIDERS),
    ("public.patients", _INSERT_PATIENTS),
    ("public.encounters", _INSERT_ENCOUNTERS),
    ("public.observations", _INSERT_OBSERVATIONS),
    ("public.prescriptions", _INSERT_PRESCRIPTIONS),
    ("public.appointments", _INSERT_APPOINTMENTS),
    ("public.audit_log", _INSERT_AUDIT),
]


def _set_aside_fks_and_indexes(cur: psycopg.Cursor[Any]) -> list[sql.SQL | sql.Composed]:
    """Drop the seeded tables' FKs and secondary indexes; return the statements restoring them.

    pg_restore's order: per-row FK checks and incremental index inserts cost about half the
    load time, while one validating join and one sorted index build per object after the
    load are cheap. Definitions come from pg_get_constraintdef/pg_get_indexdef, so the
    restored objects are identical (same names, same DEFERRABLE flags). Primary keys and
    unique constraints stay: FKs depend on them. Skipped (returns []) unless the current
    role owns every table, so a seed by a non-owner still works, only slower.
    """
    tables = [t for t, _ in TABLES]
    cur.execute(
        "SELECT bool_and(pg_has_role(relowner, 'USAGE')) FROM pg_class"
        " WHERE oid = ANY(%s::regclass[])",
        (tables,),
    )
    row = cur.fetchone()
    if row is None or not row[0]:
        return []
    cur.execute(
        """
        SELECT n.nspname, c.relname, k.conname, pg_get_constraintdef(k.oid)
        FROM pg_constraint AS k
        JOIN pg_class AS c ON c.oid = k.conrelid
        JOIN pg_namespace AS n ON n.oid = c.relnamespace
        WHERE k.contype = 'f' AND k.conrelid = ANY(%s::regclass[])
        ORDER BY k.oid
        """,
        (tables,),
    )
    fks = cur.fetchall()
    cur.execute(
        """
        SELECT n.nspname, x.relname, pg_get_indexdef(i.indexrelid)
        FROM pg_index AS i
        JOIN pg_class AS x ON x.oid = i.indexrelid
        JOIN pg_namespace AS n ON n.oid = x.relnamespace
        WHERE i.indrelid = ANY(%s::regclass[])
          AND NOT EXISTS (SELECT FROM pg_constraint AS k WHERE k.conindid = i.indexrelid)
        ORDER BY i.indexrelid
        """,
        (tables,),
    )
    indexes = cur.fetchall()
    restore: list[sql.SQL | sql.Composed] = []
    for schema, table, name, _definition in fks:
        cur.execute(
            sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                sql.Identifier(schema, table), sql.Identifier(name)
            )
        )
    for schema, name, definition in indexes:
        cur.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(schema, name)))
        restore.append(sql.SQL(definition))  # server-generated CREATE INDEX statement
    for schema, table, name, definition in fks:
        restore.append(
            sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                sql.Identifier(schema, table), sql.Identifier(name), sql.SQL(definition)
            )
        )
    return restore


def seed(
    conn: psycopg.Connection[Any], *, patients: int = 10_000, seed: int = 42
) -> dict[str, int]:
    """Fill an empty database at alembic head; return rows inserted per table.

    Runs in one transaction (a savepoint if the caller already opened one): a failure
    leaves the database as it was, FKs and indexes included.
    """
    if patients < 1:
        raise ValueError("patients must be at least 1")
    params = _params(seed, patients)
    counts: dict[str, int] = {}
    with conn.transaction(), conn.cursor() as cur:
        # Local settings only: no fsync wait at commit, no JIT compile time, room for the window
        # sorts that number encounters and observations and for the index builds.
        cur.execute("SET LOCAL synchronous_commit = off")
        cur.execute("SET LOCAL jit = off")
        cur.execute("SET LOCAL work_mem = '256MB'")
        cur.execute("SET LOCAL maintenance_work_mem = '512MB'")
        cur.execute("SET LOCAL TimeZone = 'UTC'")
        _check_empty(cur)
        restore = _set_aside_fks_and_indexes(cur)
        for table, statement in _STEPS:
            cur.execute(statement, params)
            counts[table] = cur.rowcount
            if table in ("public.encounters", "public.observations"):
                params[table.removeprefix("public.")] = cur.rowcount
        for ddl in restore:
            cur.execute(ddl)
        for table, column in TABLES:
            if column is None:
                continue
            schema, name = table.split(".")
            cur.execute(
                sql.SQL(
                    "SELECT setval(pg_get_serial_sequence({table}, {column}),"
                    " coalesce(max({col}), 1), max({col}) IS NOT NULL) FROM {ident}"
                ).format(
                    table=sql.Literal(table),
                    column=sql.Literal(column),
                    col=sql.Identifier(column),
                    ident=sql.Identifier(schema, name),
                )
            )
        # Fresh statistics, so pg_class.reltuples (the planner's and the plan file's row
        # estimates) match what was loaded.
        cur.execute(
            sql.SQL("ANALYZE {}").format(
                sql.SQL(", ").join(sql.Identifier(*t.split(".")) for t, _ in TABLES)
            )
        )
    return counts


def _connect_url(url: str) -> str:
    """Accept SQLAlchemy-style URLs too: libpq only knows postgresql:// and postgres://."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme.startswith("postgresql+"):
        return "postgresql://" + rest
    return url


def main(argv: list[str] | None = None) -> int:
    """CLI: seed a database and print rows per table (never values, never the URL)."""
    parser = argparse.ArgumentParser(
        prog="python -m migration_assets.devstack.seed",
        description="Fill an empty, migrated clinic database with deterministic synthetic data.",
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("DATABASE_URL"),
        help="postgresql:// URL of the database (default: $DATABASE_URL)",
    )
    parser.add_argument("--patients", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    if not args.url:
        parser.error("--url is required (or set DATABASE_URL)")
    started = time.perf_counter()
    with psycopg.connect(_connect_url(args.url)) as conn:
        counts = seed(conn, patients=args.patients, seed=args.seed)
    elapsed = time.perf_counter() - started
    width = max(len(t) for t in counts)
    for table, rows in counts.items():
        print(f"{table:<{width}}  {rows:>12,}")
    print(f"{'total':<{width}}  {sum(counts.values()):>12,}  ({elapsed:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
