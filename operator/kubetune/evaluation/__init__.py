"""Evaluation, pure side: scorers for golden answers, refusal detection, the LLM-judge client.

No torch, kopf or kubernetes imports here: the trainer (kubetune_trainer.evaluate) runs the model
and calls these functions on its generations; the operator and `kubetune run` apply the gates
(kubetune.gates) to what it reports.
"""

from kubetune.evaluation.refusal import RefusalVerdict, classify_refusal, is_refusal
from kubetune.evaluation.scorers import SCORERS, contains, exact_match, f1, normalize, rouge_l, score

__all__ = [
    "SCORERS",
    "RefusalVerdict",
    "classify_refusal",
    "contains",
    "exact_match",
    "f1",
    "is_refusal",
    "normalize",
    "rouge_l",
    "score",
]
