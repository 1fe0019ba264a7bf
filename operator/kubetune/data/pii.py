"""PII/PHI detection and redaction, built on Presidio's recognizers without its NLP pipeline.

What comes from Presidio (``presidio-analyzer``), used as they are:

- the candidate regexes of ``EmailRecognizer``, ``CreditCardRecognizer``, ``IbanRecognizer``,
  ``UsSsnRecognizer`` and ``IpRecognizer``;
- their validators: the Luhn check (credit cards), the ISO 13616 mod-97 checksum and per-country
  format (IBAN), the SSA rules (SSN: no 000/666 area, no 00 group, no 0000 serial, no sample
  numbers, one delimiter), ``ipaddress`` validation (IP);
- ``phonenumbers`` (Presidio's phone backend) to validate phone candidates, and ``tldextract``
  (Presidio's e-mail validator) with its bundled suffix list, offline.

What is ours, because Presidio has no recognizer for it or only a context-free one that, without its
NLP context enhancer, flags every 9-digit number: dates of birth, medical record numbers, passport
and driver-licence numbers (all gated on context words such as "DOB", "MRN", "passport no."), URLs
with credentials, secrets (cloud keys, tokens, private keys, JWTs), phone candidate patterns, and a
"label before the number" rule that keeps order/invoice/tracking numbers from being taken for cards,
phones or SSNs.

Why not ``AnalyzerEngine``: its phone recognizer runs ``PhoneNumberMatcher`` for eight regions over
every text, and every recognizer runs on every text. Here a few cheap gates (a digit, an ``@``,
``://``, a context word) decide which detectors run at all, so most text costs one or two C-level
regex scans. ``benchmarks/data_preflight.py`` measures both on the same sample.

Person names need a named-entity model. Pass ``person_detector`` (a callable returning spans); with
none, ``PERSON`` is reported as not covered. :func:`spacy_person_detector` builds one when a spaCy
English pipeline is installed.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class PiiType(StrEnum):
    """PII/PHI types; the placeholder for each is ``<VALUE>``, e.g. ``<EMAIL>``."""

    SECRET = "SECRET"
    URL_CREDENTIALS = "URL_CREDENTIALS"
    EMAIL = "EMAIL"
    IBAN = "IBAN"
    CREDIT_CARD = "CREDIT_CARD"
    SSN = "SSN"
    DATE_OF_BIRTH = "DATE_OF_BIRTH"
    MRN = "MRN"
    PASSPORT = "PASSPORT"
    DRIVER_LICENSE = "DRIVER_LICENSE"
    PHONE = "PHONE"
    IP_ADDRESS = "IP_ADDRESS"
    PERSON = "PERSON"

    @property
    def placeholder(self) -> str:
        return f"<{self.value}>"


# Declaration order is the priority when two findings overlap.
_PRIORITY = {t: i for i, t in enumerate(PiiType)}
STRUCTURED_TYPES: tuple[PiiType, ...] = tuple(t for t in PiiType if t is not PiiType.PERSON)


@dataclass(frozen=True, slots=True)
class Finding:
    type: PiiType
    start: int
    end: int


PersonDetector = Callable[[str], Iterable[tuple[int, int]]]

# --- gates and patterns ---------------------------------------------------------------------------

_DIGIT = re.compile(r"\d")
_MONTH = r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"
_DATE = (
    r"(?:\d{1,2}[/.\-]\d{1,2}[/.\-](?:\d{4}|\d{2})"
    r"|\d{4}[/.\-]\d{1,2}[/.\-]\d{1,2}"
    rf"|{_MONTH}\.?\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+\d{{4}}"
    rf"|\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH}\.?,?\s+\d{{4}})"
)
# Cheap gates: substring tests (C speed, no regex) decide which detectors run at all.
_SECRET_HINTS = (
    "AKIA", "ASIA", "ABIA", "ACCA", "AIDA", "AROA", "AIPA", "ANPA", "ANVA", "APKA", "ghp_", "gho_", "ghu_",
    "ghs_", "ghr_", "github_pat_", "glpat-", "xox", "xapp-", "sk-", "k_live_", "k_test_", "AIza", "hf_",
    "npm_", "eyJ", "PRIVATE KEY",
)  # fmt: skip
_ASSIGNMENT_HINTS: tuple[str, ...] = ("key", "token", "passw", "pwd", "secret")
_DOB_HINTS: tuple[str, ...] = ("dob", "d.o.b", "birth", "born")
_MRN_HINTS: tuple[str, ...] = ("mrn", "medical rec", "patient", "chart")
_SSN_HINTS: tuple[str, ...] = ("ssn", "social sec", "ss#")
_PASSPORT_HINTS: tuple[str, ...] = ("passport",)
_LICENSE_HINTS: tuple[str, ...] = ("licen", "dl")
_PHONE_HINTS: tuple[str, ...] = (
    "phone",
    "tel",
    "mobile",
    "cell",
    "call",
    "fax",
    "contact",
    "whatsapp",
    "text me",
)
# Seven or more digits with at most two separators between neighbours: every card, IBAN, SSN and
# phone number has such a run; dosages, lab values and room numbers do not.
_NUMBERISH = re.compile(r"\d(?:[\s().\-/]{0,2}\d){6,}")
_IPV4_HINT = re.compile(r"\d\.\d{1,3}\.\d{1,3}\.\d")


_WINDOW_MARGIN = 24  # chars kept around a digit run: an IBAN's "GB82 WEST " prefix, a phone's "+1 ("


def _number_windows(text: str) -> list[tuple[int, int]]:
    """Spans around each run of 7+ digits, widened by a margin and cut at spaces, merged.

    Patterns run with ``finditer(text, pos, endpos)``: look-behinds still see the text before
    ``pos``, and ``endpos`` sits on a space (or the end), where every pattern's end check agrees.
    """
    windows: list[tuple[int, int]] = []
    for m in _NUMBERISH.finditer(text):
        start = max(0, m.start() - _WINDOW_MARGIN)
        cut = text.rfind(" ", 0, start)
        start = cut + 1 if cut >= 0 else 0
        end = m.end() + _WINDOW_MARGIN
        cut = text.find(" ", end)
        end = cut if cut >= 0 else len(text)
        if windows and start <= windows[-1][1]:
            windows[-1] = (windows[-1][0], max(end, windows[-1][1]))
        else:
            windows.append((start, end))
    return windows


def _any(hints: tuple[str, ...], text: str) -> bool:
    for h in hints:  # noqa: SIM110  # a plain loop: cheaper than any() over a generator here
        if h in text:
            return True
    return False


_DOB = re.compile(
    r"\b(?:d\.?o\.?b\.?|date\s+of\s+birth|birth\s*date|birthday|born)(?![a-z])[^\d\n]{0,24}?("
    + _DATE
    + r")(?![\d/])",
    re.I,
)
_MRN = re.compile(
    r"\b(?:mrn|medical\s+record(?:\s+(?:number|num|no\.?|#))?|patient\s+(?:id|number|num|no\.?)|chart\s+(?:number|num|no\.?|#))"
    r"(?![a-z])\s*(?:is\s+|was\s+)?[:#=]?\s*#?\s*((?:[a-z]{1,3}[-\s]?)?\d[\d-]{3,14}\d)(?![\w-])",
    re.I,
)
_PASSPORT = re.compile(
    r"\bpassport(?:\s+(?:number|num|no\.?|#|id))?(?![a-z])\s*(?:is\s+|was\s+)?[:#=]?\s*#?\s*([a-z0-9]{6,10})\b",
    re.I,
)
_DRIVER_LICENSE = re.compile(
    r"\b(?:driver'?s?\s+licen[cs]e|driving\s+licen[cs]e|licen[cs]e\s+(?:number|num|no\.?|#)|dl)"
    r"(?:\s+(?:number|num|no\.?|#|id))?(?![a-z])\s*(?:is\s+|was\s+)?[:#=]?\s*#?\s*([a-z0-9](?:[a-z0-9*-]{4,17})[a-z0-9])\b",
    re.I,
)
_SSN_BARE = re.compile(
    r"\b(?:ssn|social\s+security(?:\s+(?:number|num|no\.?|#))?|ss#)(?![a-z])[^\d\n]{0,12}?(?<!\d)(\d{9})(?!\d)",
    re.I,
)
_PHONE_NANP = re.compile(
    r"(?<![\w+/.\-])(?:\+?1[\s.\-]?)?(?:\(\d{3}\)\s?|\d{3}[\s.\-])\d{3}[\s.\-]\d{4}(?![\w/\-]|[.,]\d)"
)
_PHONE_INTL = re.compile(r"(?<![\w+])\+\d{1,3}(?:[\s.\-]?\(?\d{1,5}\)?){2,6}(?![\w\-]|[.,]\d)")
_PHONE_CONTEXT = re.compile(
    r"\b(?:phone|tel|telephone|mobile|cell|call|fax|contact|whatsapp|text\s+me)(?![a-z])[^\d\n]{0,16}?"
    r"(?<![\w+/.\-])(0\d{1,4}[\s\-]?\d{3,4}[\s\-]?\d{3,4}|\d{10,11})(?![\w/\-]|[.,]\d)",
    re.I,
)
_URL_CREDENTIALS = re.compile(
    r"\b[a-z][a-z0-9+.\-]{1,20}://[^\s/?#@:\"'<>]+:[^\s/?#@\"'<>]+@[^\s\"'<>]+", re.I
)
_SECRETS = re.compile(
    r"-----BEGIN[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----.*?-----END[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----"
    r"|\b(?:AKIA|ASIA|ABIA|ACCA|AIDA|AROA|AIPA|ANPA|ANVA|APKA)[A-Z0-9]{16}\b"
    r"|\bgh[pousr]_[A-Za-z0-9]{36,255}\b"
    r"|\bgithub_pat_[A-Za-z0-9_]{22,255}\b"
    r"|\bglpat-[A-Za-z0-9_\-]{20,}"
    r"|\bxox[abposr]-[A-Za-z0-9\-]{10,250}"
    r"|\bxapp-\d-[A-Za-z0-9\-]{10,250}"
    r"|\bsk-(?:proj-|svcacct-|admin-|ant-(?:api\d\d-)?)?[A-Za-z0-9_\-]{20,}"
    r"|\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,}\b"
    r"|\bAIza[0-9A-Za-z_\-]{35}"
    r"|\bhf_[A-Za-z]{30,}\b"
    r"|\bnpm_[A-Za-z0-9]{36}\b"
    r"|\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}",
    re.S,
)
# Key/password assignments: the value is the secret ("aws_secret_access_key = wJal...").
_SECRET_ASSIGNMENT = re.compile(
    r"(?:aws_?secret_?(?:access_?)?key|secret_?key|api_?key|access_?token|auth_?token|password|passwd|pwd|client_?secret)"
    r"[\"']?\s*[:=]\s*[\"']?([^\s\"',;]{8,})",
    re.I,
)
# A label right before a number that is not PII ("order #", "invoice no.", "tracking number:").
_NOT_PII_LABEL = re.compile(
    r"(?:order|invoice|tracking|confirmation|ticket|case|ref|reference|po|sku|serial|part|model|batch|lot|isbn|build"
    r"|version|ver|v)\s*(?:no\.?|number|num|id|#)?\s*[:#=]?\s*#?\s*$",
    re.I,
)
_VERSION_BEFORE = re.compile(r"(?:\bv|version|ver\.?|release|build|rev\.?|\d\.)\s*$", re.I)


def _labelled_not_pii(text: str, start: int) -> bool:
    """A label such as "order #" right before, or the tail of a longer dashed number ("123-4567-...")."""
    if start >= 2 and text[start - 1] in "-." and text[start - 2].isdigit():
        return True
    return bool(_NOT_PII_LABEL.search(text, max(0, start - 24), start))


# Optional heavy packages that importing presidio_analyzer pulls in when they are installed
# (its Hugging Face NLP engine and spaCy's thinc import them eagerly) and that nothing here uses.
_NOT_NEEDED = ("torch", "transformers")


@contextlib.contextmanager
def _without_unused_ml_stacks() -> Iterator[None]:
    """Import Presidio without torch/transformers when those are not loaded yet.

    ``presidio_analyzer`` imports spaCy (~2-3 s) and, where torch and transformers are installed,
    those too (~9 s more on 2 cores), for NLP engines that this module never builds. While it is
    imported, the ones not already loaded are masked (a ``None`` entry in ``sys.modules`` makes their
    import fail fast and leaves nothing half-imported); the masks are removed afterwards, so a later
    ``import torch`` / ``import transformers`` works as usual. The only lasting effect: thinc (spaCy's
    backend) records torch as absent, which matters only to spaCy pipelines on torch, not used here.
    Set ``KUBETUNE_PII_IMPORT_ML=1`` to import Presidio without masking.
    """
    masked = (
        []
        if os.environ.get("KUBETUNE_PII_IMPORT_ML") == "1"
        else [m for m in _NOT_NEEDED if m not in sys.modules]
    )
    for name in masked:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        yield
    finally:
        for name in masked:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]


class PiiScanUnavailable(RuntimeError):
    """Presidio is not installed: the base install (the operator, its webhook, the CLI) leaves it out."""


@functools.cache
def _presidio() -> dict[str, Any]:
    """Presidio's recognizers, imported on first use (see :func:`_without_unused_ml_stacks`)."""
    try:
        import tldextract

        with _without_unused_ml_stacks():
            from presidio_analyzer.predefined_recognizers import (
                CreditCardRecognizer,
                EmailRecognizer,
                IbanRecognizer,
                IpRecognizer,
                UsSsnRecognizer,
            )
    except ImportError as e:
        raise PiiScanUnavailable(
            f"PII scanning needs Presidio ({e.name or e} is not installed): pip install 'kubetune[data]', "
            "or turn the scan off (pii: off, or --pii off)"
        ) from None

    def pattern(recognizer: Any, name: str | None = None, flags: int = 0) -> re.Pattern[str]:
        pats = [p for p in recognizer.PATTERNS if name is None or p.name == name]
        return re.compile("|".join(f"(?:{p.regex})" for p in pats) if len(pats) > 1 else pats[0].regex, flags)

    ip = IpRecognizer()
    return {
        "email_re": pattern(EmailRecognizer),
        # The bundled public-suffix snapshot: no download at run time.
        "tld": tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None),
        "card_re": pattern(CreditCardRecognizer),
        "card": CreditCardRecognizer(),
        "iban_re": pattern(IbanRecognizer),
        "iban": IbanRecognizer(),
        "ssn_re": pattern(UsSsnRecognizer, "SSN5 (medium)"),
        "ssn": UsSsnRecognizer(),
        "ipv4_re": pattern(IpRecognizer, "IPv4"),
        "ipv6_re": pattern(IpRecognizer, "IPv6", re.I),
        "ip": ip,
    }


@functools.cache
def _phonenumbers() -> Any:
    import phonenumbers

    return phonenumbers


class PiiScanner:
    """Finds PII in text. Thread-safe after construction; construct once and reuse."""

    def __init__(self, *, person_detector: PersonDetector | None = None) -> None:
        self._p = _presidio()
        self._person = person_detector

    @staticmethod
    def coverage(person: bool) -> tuple[list[PiiType], list[PiiType]]:
        """(covered, not covered) types of a scanner with (``person``) or without a person detector."""
        return [t for t in PiiType if t is not PiiType.PERSON or person], [] if person else [PiiType.PERSON]

    @property
    def covered(self) -> list[PiiType]:
        return self.coverage(self._person is not None)[0]

    @property
    def not_covered(self) -> list[PiiType]:
        return self.coverage(self._person is not None)[1]

    # -- detection --

    def find(self, text: str) -> list[Finding]:
        """Non-overlapping findings in ``text``, sorted by position."""
        found: list[Finding] = []
        add = found.append
        p = self._p
        if _any(_SECRET_HINTS, text):
            for m in _SECRETS.finditer(text):
                add(Finding(PiiType.SECRET, m.start(), m.end()))
        low = text.lower()
        if ("=" in text or ":" in text) and _any(_ASSIGNMENT_HINTS, low):
            for m in _SECRET_ASSIGNMENT.finditer(text):
                value = m.group(1)
                if any(c.isdigit() for c in value) and any(c.isalpha() for c in value) and "<" not in value:
                    add(Finding(PiiType.SECRET, m.start(1), m.end(1)))
        if "://" in text:
            for m in _URL_CREDENTIALS.finditer(text):
                end = m.end()
                while end > m.start() and text[end - 1] in ".,;:)]}!?":
                    end -= 1
                add(Finding(PiiType.URL_CREDENTIALS, m.start(), end))
        if "@" in text:
            tld = p["tld"]
            for m in p["email_re"].finditer(text):
                if tld(m.group(0).rsplit("@", 1)[1]).suffix:
                    add(Finding(PiiType.EMAIL, m.start(), m.end()))
        if _DIGIT.search(text) is None:
            return self._finish(text, found)
        self._find_numbers(text, add)
        self._find_in_context(text, low, add)
        return self._finish(text, found)

    def _find_numbers(self, text: str, add: Callable[[Finding], None]) -> None:
        p = self._p
        if "." in text and _IPV4_HINT.search(text):
            self._find_ipv4(text, add)
        if "::" in text or text.count(":") >= 7:
            for m in p["ipv6_re"].finditer(text):
                cand = m.group(0)
                if _DIGIT.search(cand) and cand.count(":") >= 2 and not p["ip"].invalidate_result(cand):
                    add(Finding(PiiType.IP_ADDRESS, m.start(), m.end()))
        windows = _number_windows(text)
        if windows:
            for start, end in windows:
                self._find_long_numbers(text, start, end, add)

    def _find_long_numbers(self, text: str, pos: int, endpos: int, add: Callable[[Finding], None]) -> None:
        """Cards, IBANs, SSNs and phones in ``text[pos:endpos]`` (a window cut at spaces)."""
        p = self._p
        for m in p["iban_re"].finditer(text, pos, endpos):
            # As Presidio does: try the whole match, then without the optional trailing groups.
            start = m.start()
            for end in sorted({m.end(), m.end(2), m.end(1)}, reverse=True):
                if end > start and p["iban"].validate_result(text[start:end]) is True:
                    add(Finding(PiiType.IBAN, start, end))
                    break
        for m in p["card_re"].finditer(text, pos, endpos):
            digits = sum(c.isdigit() for c in m.group(0))
            if (
                13 <= digits <= 19
                and p["card"].validate_result(m.group(0))
                and not _labelled_not_pii(text, m.start())
            ):
                add(Finding(PiiType.CREDIT_CARD, m.start(), m.end()))
        for m in p["ssn_re"].finditer(text, pos, endpos):
            s, e = m.start(), m.end()
            if (
                (s and text[s - 1] in ".-")
                or text[e : e + 1] in ("-",)
                or (text[e : e + 1] == "." and text[e + 1 : e + 2].isdigit())
            ):
                continue
            if not p["ssn"].invalidate_result(m.group(0)) and not _labelled_not_pii(text, s):
                add(Finding(PiiType.SSN, s, e))
        phonenumbers = None
        for rx, region in ((_PHONE_NANP, "US"), (_PHONE_INTL, None)):
            for m in rx.finditer(text, pos, endpos):
                if _labelled_not_pii(text, m.start()):
                    continue
                phonenumbers = phonenumbers or _phonenumbers()
                if _valid_phone(phonenumbers, m.group(0), region):
                    add(Finding(PiiType.PHONE, m.start(), m.end()))

    def _find_ipv4(self, text: str, add: Callable[[Finding], None]) -> None:
        p = self._p
        for m in p["ipv4_re"].finditer(text):
            s, e = m.start(), m.end()
            if (text[e : e + 1] == "." and text[e + 1 : e + 2].isdigit()) or (s and text[s - 1] in ".-"):
                continue  # part of a longer dotted number (a version, an OID)
            if _VERSION_BEFORE.search(text, max(0, s - 12), s):
                continue
            if not p["ip"].invalidate_result(m.group(0)):
                add(Finding(PiiType.IP_ADDRESS, s, e))

    def _find_in_context(self, text: str, low: str, add: Callable[[Finding], None]) -> None:
        """Detectors that need a context word; ``low`` is ``text.lower()`` (same offsets for ASCII hints)."""
        for hints, rx, kind in (
            (_DOB_HINTS, _DOB, PiiType.DATE_OF_BIRTH),
            (_MRN_HINTS, _MRN, PiiType.MRN),
            (_SSN_HINTS, _SSN_BARE, PiiType.SSN),
        ):
            if _any(hints, low):
                for m in rx.finditer(text):
                    add(Finding(kind, m.start(1), m.end(1)))
        for hints, rx, kind, min_digits in (
            (_PASSPORT_HINTS, _PASSPORT, PiiType.PASSPORT, 5),
            (_LICENSE_HINTS, _DRIVER_LICENSE, PiiType.DRIVER_LICENSE, 4),
        ):
            if _any(hints, low):
                for m in rx.finditer(text):
                    if sum(c.isdigit() for c in m.group(1)) >= min_digits:
                        add(Finding(kind, m.start(1), m.end(1)))
        if _any(_PHONE_HINTS, low):
            phonenumbers = None
            for m in _PHONE_CONTEXT.finditer(text):
                phonenumbers = phonenumbers or _phonenumbers()
                cand = m.group(1)
                if any(_valid_phone(phonenumbers, cand, region) for region in ("US", "GB", "DE", "FR")):
                    add(Finding(PiiType.PHONE, m.start(1), m.end(1)))

    def _finish(self, text: str, found: list[Finding]) -> list[Finding]:
        if self._person is not None:
            found.extend(Finding(PiiType.PERSON, s, e) for s, e in self._person(text))
        if len(found) <= 1:
            return found
        # Higher priority first, then longer; keep what does not overlap what is kept.
        found.sort(key=lambda f: (_PRIORITY[f.type], f.start - f.end))
        kept: list[Finding] = []
        for f in found:
            if all(f.end <= k.start or f.start >= k.end for k in kept):
                kept.append(f)
        kept.sort(key=lambda f: f.start)
        return kept

    # -- redaction --

    def redact(self, text: str) -> tuple[str, list[Finding]]:
        """``text`` with each finding replaced by its typed placeholder, and the findings."""
        findings = self.find(text)
        if not findings:
            return text, findings
        out: list[str] = []
        last = 0
        for f in findings:
            out.append(text[last : f.start])
            out.append(f.type.placeholder)
            last = f.end
        out.append(text[last:])
        return "".join(out), findings


def _valid_phone(phonenumbers: Any, candidate: str, region: str | None) -> bool:
    try:
        number = phonenumbers.parse(candidate, region)
    except Exception:  # NumberParseException and friends: not a phone number
        return False
    return bool(phonenumbers.is_valid_number(number))


def spacy_person_detector(model: str = "en_core_web_sm") -> PersonDetector | None:
    """A PERSON detector from an installed spaCy pipeline, or ``None`` when none is installed.

    Nothing is downloaded: a pipeline that is not installed means names are not covered.
    """
    try:
        import spacy

        nlp = spacy.load(model, disable=["parser", "lemmatizer", "tagger", "attribute_ruler"])
    except (ImportError, OSError):
        return None

    def detect(text: str) -> list[tuple[int, int]]:
        if not any(c.isupper() for c in text):
            return []
        return [(e.start_char, e.end_char) for e in nlp(text).ents if e.label_ == "PERSON"]

    return detect
