"""Scorers for golden answers: a generation and its reference answer(s) ⇒ a score in [0, 1].

All four compare *normalised* text (SQuAD-style): lower case, punctuation and the articles
a/an/the removed, whitespace collapsed. So "Urgency: EMERGENCY — call 911" and
"urgency emergency call 911" are the same text.

- exact_match: 1.0 when the normalised texts are equal.
- contains: 1.0 when the normalised reference occurs in the normalised generation on word
  boundaries ("urgent" is not found in "urgently"). For label-style answers such as
  "Urgency: URGENT" this is the honest metric: the label must be there, the advice may vary.
- rouge_l: ROUGE-L F-measure (β = 1) from the longest common subsequence of tokens.
- f1: token-overlap F1 (bag of tokens, SQuAD).

With several references, the best score counts.
"""

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
# ASCII punctuation plus the dashes, quotes and bullets generations often contain.
_PUNCT = re.compile("[" + re.escape(string.punctuation + "‐‑‒–—―‘’‚‛“”„‟•…·") + "]")
_SPACE = re.compile(r"\s+")

Scorer = Callable[[str, str], float]


def normalize(text: str) -> str:
    text = _PUNCT.sub(" ", text.lower())
    text = _ARTICLES.sub(" ", text)
    return _SPACE.sub(" ", text).strip()


def tokens(text: str) -> list[str]:
    return normalize(text).split()


def exact_match(prediction: str, reference: str) -> float:
    return 1.0 if normalize(prediction) == normalize(reference) else 0.0


def contains(prediction: str, reference: str) -> float:
    ref = normalize(reference)
    if not ref:
        return 0.0
    return 1.0 if f" {ref} " in f" {normalize(prediction)} " else 0.0


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    pred, ref = tokens(prediction), tokens(reference)
    if not pred or not ref:
        return 1.0 if pred == ref else 0.0
    lcs = _lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def f1(prediction: str, reference: str) -> float:
    pred, ref = tokens(prediction), tokens(reference)
    if not pred or not ref:
        return 1.0 if pred == ref else 0.0
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


SCORERS: dict[str, Scorer] = {"exact_match": exact_match, "contains": contains, "rouge_l": rouge_l, "f1": f1}


def score(scorer: str, prediction: str, references: str | Sequence[str]) -> float:
    """Best score of `prediction` against one or several references with the named scorer."""
    try:
        fn = SCORERS[str(scorer)]
    except KeyError:
        raise ValueError(f"unknown scorer {scorer!r}; valid: {', '.join(SCORERS)}") from None
    refs = [references] if isinstance(references, str) else list(references)
    if not refs:
        raise ValueError("no reference answer")
    return max(fn(prediction, ref) for ref in refs)
