"""The synthetic clinic's vocabularies: names, places, codes, all fictional or public.

Order matters: values are picked by index, so editing a list changes the seeded data.
"""

from __future__ import annotations

from decimal import Decimal

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
