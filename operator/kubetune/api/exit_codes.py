"""Exit codes of the trainer process, seen from the operator: which ones are permanent (the Job's
podFailurePolicy fails the Job at once instead of spending `backoffLimit` retries) and which reason
a bare code stands for. The codes themselves are defined once, in
`kubetune.api.trainer_contract.EXIT_CODES` (the trainer exits with them); this module derives the
operator's view from that table.

| code | meaning                               | reason                         | retried |
|------|---------------------------------------|--------------------------------|---------|
| 0    | finished (the operator applies gates) | -                              | -       |
| 1    | unexpected error                      | TrainerError                   | yes     |
| 2    | bad command line or config file       | InvalidSpec                    | no      |
| 3    | data invalid / insufficient           | DataInvalid / InsufficientData | no      |
| 4    | model or adapter unavailable          | ModelUnavailable               | no      |
| 5    | training diverged (NaN/inf loss)      | Diverged                       | no      |
| 6    | CUDA out of memory at the planned size| OutOfMemory                    | no      |
| 7    | a GPU job's pod sees no CUDA device   | GPUUnavailable                 | no      |
| 8    | s3:// bucket missing, credentials wrong or endpoint unreachable | StorageUnavailable | no |
| 9    | a torchrun rank killed by a signal; the others stopped (kubetune-trainer launch) | RankFailed | yes |
| 137  | SIGKILL (OOMKilled if the kubelet says so) | OutOfMemory / TrainerError | yes   |
| 143  | SIGTERM (interrupted; resumes from the last checkpoint) | Interrupted  | yes     |

The precise reason (InsufficientData vs DataInvalid share 3) is in the TrainerResult the trainer
writes into its termination message; the code is the fallback.
"""

from kubetune.api.enums import Reason
from kubetune.api.trainer_contract import EXIT_CODES, EXIT_USAGE

RETRIED_REASONS = frozenset({Reason.TRAINER_ERROR, Reason.INTERRUPTED, Reason.RANK_FAILED})

PERMANENT_EXIT_CODES: tuple[int, ...] = tuple(sorted(
    {code for reason, code in EXIT_CODES.items() if reason not in RETRIED_REASONS} | {EXIT_USAGE}))
"""Exit codes after which a retry cannot help: the podFailurePolicy fails the Job at once."""

REASON_BY_EXIT_CODE: dict[int, str] = {EXIT_USAGE: Reason.INVALID_SPEC}
for _reason, _code in EXIT_CODES.items():
    REASON_BY_EXIT_CODE.setdefault(_code, _reason)  # first listed wins: 3 ⇒ DataInvalid


def exit_code_for(reason: str | None) -> int:
    """The code the trainer exits with after failing with `reason` (1 for anything unlisted)."""
    return EXIT_CODES.get(reason or "", EXIT_CODES[Reason.TRAINER_ERROR])


def reason_for(exit_code: int) -> str:
    return REASON_BY_EXIT_CODE.get(exit_code, Reason.TRAINER_ERROR)
