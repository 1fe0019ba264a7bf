"""What evaluation sends out of the cluster: the dataset's PII policy applied to every text an LLM
judge receives (golden and safety prompts, reference answers, the model's answers).

The judge is usually a service outside the cluster. Training data is redacted by the data preflight
before anything trains on it; evaluation sets are not training data, and the model's answers are new
text, so both are scrubbed here, just before a request is built — with the same scanner and the same
policy (`spec.dataset.pii`):

- ``redact``: each finding is replaced by its typed placeholder (``<EMAIL>``) before sending;
- ``reject``: a text with PII is not sent at all (:class:`Withheld`; that example goes unscored);
- ``off``: sent as is — the spec said PII needs no protection.

:class:`PiiGuard` counts what it redacted and withheld, for the evaluation report.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from kubetune.api.enums import PiiPolicy
from kubetune.evaluation.judge import JudgeError


class Withheld(JudgeError):
    """A text with PII under `pii: reject`: it is not sent to the judge (message safe to log)."""


@dataclass
class PiiGuard:
    """A JudgeClient `scrub` hook: applies `policy` to one text and counts what it found."""

    policy: str
    scanner: Any = None  # a kubetune.data.pii.PiiScanner; built on first use
    found: Counter[str] = field(default_factory=Counter)
    texts: int = 0
    redacted: int = 0
    withheld: int = 0

    def __call__(self, text: str) -> str:
        self.texts += 1
        if self.policy == PiiPolicy.OFF or not text:
            return text
        if self.scanner is None:
            from kubetune.data.pii import PiiScanner

            self.scanner = PiiScanner()
        clean, findings = self.scanner.redact(text)
        if not findings:
            return text
        kinds = Counter(str(f.type) for f in findings)
        self.found.update(kinds)
        if self.policy == PiiPolicy.REJECT:
            self.withheld += 1
            raise Withheld("not sent to the judge: it holds PII (" + ", ".join(sorted(kinds)) + ") and the "
                           "dataset's policy is pii: reject")
        self.redacted += 1
        return str(clean)

    def summary(self) -> dict[str, Any]:
        """For the evaluation report: the policy, how many texts were checked, redacted, withheld."""
        return {"policy": str(self.policy), "texts": self.texts, "redacted": self.redacted,
                "withheld": self.withheld, "found": dict(sorted(self.found.items()))}

    def sentence(self, endpoint: str) -> str:
        if self.policy == PiiPolicy.OFF:
            return f"sent to the judge at {endpoint} unscrubbed: the dataset's PII policy is off"
        what = ", ".join(f"{k} {v}" for k, v in sorted(self.found.items())) or "none found"
        return (f"PII policy {self.policy} applied to the {self.texts} texts sent to the judge at {endpoint}: "
                f"{self.redacted} redacted, {self.withheld} withheld ({what})")


__all__ = ["PiiGuard", "Withheld"]
