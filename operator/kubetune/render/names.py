"""Deterministic names of a job's children: the same CR always renders the same names, so a
restarted operator finds what it created instead of creating a second Job.

Job names are kept within 52 characters (as CronJob and JobSet do): an Indexed Job's pods get the
hostname `<job>-<index>` and their own generated suffixes, which must stay within 63.
"""

from __future__ import annotations

import hashlib

from kubetune.api.constants import FINETUNEJOB

MAX_JOB_NAME = 52
MAX_LABEL_VALUE = 63
KIND_SUFFIX = {FINETUNEJOB: "ft", "PreferenceAlignment": "pa"}


def _short_hash(text: str, n: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def fit(name: str, limit: int) -> str:
    """`name` if it fits, else a prefix + '-' + an 8-character hash of the whole name."""
    if len(name) <= limit:
        return name
    head = name[: limit - 9].rstrip("-.")
    return f"{head}-{_short_hash(name)}"


def base_name(kind: str, name: str) -> str:
    """Base of every child's name; the kind suffix keeps a FineTuneJob and a PreferenceAlignment
    of the same name apart."""
    suffix = KIND_SUFFIX.get(kind, "job")
    return fit(name, MAX_JOB_NAME - len(suffix) - 1) + f"-{suffix}"


def job_name(kind: str, name: str, attempt: int = 1) -> str:
    """The trainer's Job; a retry after running out of memory (spec.training.oomRetry) is a Job of its
    own, `<job>-a<attempt>` (still within 52 characters)."""
    if attempt <= 1:
        return base_name(kind, name)
    suffix = f"-a{attempt}"
    return fit(base_name(kind, name), MAX_JOB_NAME - len(suffix)) + suffix


def preflight_job_name(kind: str, name: str) -> str:
    """The data preflight's Job (not Indexed: up to 62 characters is fine)."""
    return base_name(kind, name) + "-preflight"


def configmap_name(kind: str, name: str, attempt: int = 1) -> str:
    """The trainer config; an attempt after the first (spec.training.oomRetry) has its own."""
    return job_name(kind, name, attempt) + "-config"


def service_name(kind: str, name: str) -> str:
    """Headless Service for torchrun rendezvous (multi-node)."""
    return base_name(kind, name)


def label_value(name: str) -> str:
    """A label value (≤ 63 characters) standing for `name`."""
    return fit(name, MAX_LABEL_VALUE)
