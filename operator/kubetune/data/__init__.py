"""Data preflight: check a fine-tuning dataset before any GPU is held.

Pure and streaming: no kopf, kubernetes or torch imports here (Presidio, used for PII, is imported
on first use). The entry point is :func:`preflight`; the CLI is ``kubetune check-data``
(:func:`kubetune.cli.check_data.check_data_main`).

    from kubetune.data import preflight
    report = preflight("train.jsonl", format="chat", pii="redact", redact_out="clean.jsonl")
    if not report.ok:
        raise SystemExit(report.text())
"""

from kubetune.api.enums import ErrorPolicy, PiiPolicy
from kubetune.data.formats import ErrorClass, Format
from kubetune.data.pii import PiiScanner, PiiScanUnavailable, PiiType, spacy_person_detector
from kubetune.data.preflight import DEFAULT_MIN_EXAMPLES, WARN_BELOW_EXAMPLES, preflight
from kubetune.data.reader import DEFAULT_MAX_LINE_BYTES, DataFileError, read_records
from kubetune.data.report import DataReport, LineError, Reason

__all__ = [
    "DEFAULT_MAX_LINE_BYTES",
    "DEFAULT_MIN_EXAMPLES",
    "WARN_BELOW_EXAMPLES",
    "DataFileError",
    "DataReport",
    "ErrorClass",
    "ErrorPolicy",
    "Format",
    "LineError",
    "PiiPolicy",
    "PiiScanUnavailable",
    "PiiScanner",
    "PiiType",
    "Reason",
    "preflight",
    "read_records",
    "spacy_person_detector",
]
