"""PII/PHI per type (positives with placeholders), hard negatives that must survive, overlaps."""

from __future__ import annotations

import pytest

from kubetune.data.pii import PiiScanner, PiiType


@pytest.fixture(scope="module")
def scanner() -> PiiScanner:
    return PiiScanner()


POSITIVES: list[tuple[PiiType, str, str]] = [
    (PiiType.EMAIL, "write to jane.doe+test@example.co.uk today", "jane.doe+test@example.co.uk"),
    (PiiType.PHONE, "call me at (415) 555-2671 please", "(415) 555-2671"),
    (PiiType.PHONE, "call 212-555-0147.", "212-555-0147"),
    (PiiType.PHONE, "office +44 20 7946 0958, ask for Sam", "+44 20 7946 0958"),
    (PiiType.PHONE, "Tel: 02079460958", "02079460958"),
    (PiiType.PHONE, "my mobile is 4155552671", "4155552671"),
    (PiiType.SSN, "SSN 219-09-9999 on file", "219-09-9999"),
    (PiiType.SSN, "social security number: 219099999", "219099999"),
    (PiiType.CREDIT_CARD, "card 4111 1111 1111 1111 exp 12/29", "4111 1111 1111 1111"),
    (PiiType.CREDIT_CARD, "amex 378282246310005", "378282246310005"),
    (PiiType.IBAN, "IBAN DE89 3704 0044 0532 0130 00 please", "DE89 3704 0044 0532 0130 00"),
    (PiiType.IBAN, "to GB82WEST12345698765432.", "GB82WEST12345698765432"),
    (PiiType.IP_ADDRESS, "from 192.168.1.20 at noon", "192.168.1.20"),
    (PiiType.IP_ADDRESS, "host 2001:db8:85a3::8a2e:370:7334 down", "2001:db8:85a3::8a2e:370:7334"),
    (PiiType.DATE_OF_BIRTH, "DOB: 03/14/1985, seen today", "03/14/1985"),
    (PiiType.DATE_OF_BIRTH, "she was born on March 3, 1990 in Ohio", "March 3, 1990"),
    (PiiType.DATE_OF_BIRTH, "date of birth 1972-11-02", "1972-11-02"),
    (PiiType.MRN, "MRN: 00482913 admitted", "00482913"),
    (PiiType.MRN, "medical record number MR-7781234", "MR-7781234"),
    (PiiType.PASSPORT, "passport no. 531234567", "531234567"),
    (PiiType.PASSPORT, "Passport number: X12345678.", "X12345678"),
    (PiiType.DRIVER_LICENSE, "driver's license D1234567 (CA)", "D1234567"),
    (PiiType.DRIVER_LICENSE, "DL# 123-456-789", "123-456-789"),
    (
        PiiType.URL_CREDENTIALS,
        "use postgres://admin:s3cret@db.internal:5432/app.",
        "postgres://admin:s3cret@db.internal:5432/app",
    ),
    (PiiType.SECRET, "key AKIAIOSFODNN7EXAMPLE here", "AKIAIOSFODNN7EXAMPLE"),
    (
        PiiType.SECRET,
        "token ghp_abcdefghijklmnopqrstuvwxyz0123456789 ok",
        "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
    ),
    (PiiType.SECRET, "slack xoxb-123456789012-abcdefghijkl", "xoxb-123456789012-abcdefghijkl"),
    (
        PiiType.SECRET,
        "OPENAI_API_KEY sk-proj-abcdefghijklmnopqrstuvwx1234",
        "sk-proj-abcdefghijklmnopqrstuvwx1234",
    ),
    (
        PiiType.SECRET,
        "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    ),
    (
        PiiType.SECRET,
        "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U end",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    ),
    (
        PiiType.SECRET,
        "-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAKj34\n-----END RSA PRIVATE KEY-----",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAKj34\n-----END RSA PRIVATE KEY-----",
    ),
]


@pytest.mark.parametrize(("kind", "text", "value"), POSITIVES)
def test_detects_and_redacts(scanner: PiiScanner, kind: PiiType, text: str, value: str) -> None:
    findings = scanner.find(text)
    assert [(f.type, text[f.start : f.end]) for f in findings] == [(kind, value)]
    redacted, _ = scanner.redact(text)
    assert redacted == text.replace(value, f"<{kind.value}>")
    assert value not in redacted


HARD_NEGATIVES = [
    "Order #100234567 shipped",
    "order number 4111111111111111 is on its way",
    "Take 500 mg twice daily, max 4000 mg/day",
    "HbA1c 7.2%, LDL 130 mg/dL, eGFR 58 mL/min/1.73m2",
    "BP 120/80 mmHg, HR 72 bpm, temp 37.2 C",
    "Diagnosis code E11.9 and I10; CPT 99213",
    "Patient moved to room 412, bed 2",
    "Upgrade to v2.3.1 or version 1.2.3.4 of the package",
    "release 10.4.2.1 is out",
    "Appointment on 03/14/2024 at 10:30",
    "Invoice no. 2023-000123, total $1,234.56",
    "The year 1985 was good; 3.14159 is pi",
    "ISBN 978-3-16-148410-0",
    "Tracking: 1Z999AA10123456784",
    "call me maybe",
    "user@localhost is not routable",
    "std::vector<int> and a::b",
    "password: required",
    "see https://example.com/docs?page=2",
    "123-45-6789 is a sample SSN pattern but 000-12-3456 is never issued",
]


@pytest.mark.parametrize("text", HARD_NEGATIVES)
def test_hard_negatives_survive(scanner: PiiScanner, text: str) -> None:
    findings = scanner.find(text)
    assert [(f.type.value, text[f.start : f.end]) for f in findings] in ([], [("SSN", "123-45-6789")])
    if "123-45-6789" not in text:
        assert findings == []


def test_overlap_keeps_one_finding(scanner: PiiScanner) -> None:
    text = "db https://bob:hunter2@mail.example.com/x and bob@example.com"
    redacted, findings = scanner.redact(text)
    assert redacted == "db <URL_CREDENTIALS> and <EMAIL>"
    assert [f.type for f in findings] == [PiiType.URL_CREDENTIALS, PiiType.EMAIL]


def test_many_types_in_one_text(scanner: PiiScanner) -> None:
    text = "Patient DOB 01/02/1960, MRN 5566778, phone 212-555-0147, email a.b@example.org, ip 10.0.0.7"
    redacted, _ = scanner.redact(text)
    assert redacted == "Patient DOB <DATE_OF_BIRTH>, MRN <MRN>, phone <PHONE>, email <EMAIL>, ip <IP_ADDRESS>"


def test_person_needs_a_detector(scanner: PiiScanner) -> None:
    assert PiiType.PERSON in scanner.not_covered
    names = PiiScanner(person_detector=lambda t: [(i, i + 10) for i in [t.find("Jane Smith")] if i >= 0])
    assert PiiType.PERSON in names.covered and not names.not_covered
    assert names.redact("seen by Jane Smith today")[0] == "seen by <PERSON> today"


def test_presidio_import_leaves_no_masked_modules(scanner: PiiScanner) -> None:
    import sys

    assert sys.modules.get("torch", "absent") is not None
    assert sys.modules.get("transformers", "absent") is not None
