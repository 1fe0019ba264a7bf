"""Exit codes of the trainer process: the one table the trainer, the pod's podFailurePolicy and the
operator's status derivation share.

A permanent failure (bad data, divergence, a model that cannot be fetched, an invalid config) exits
with its own code so the Job's podFailurePolicy fails the Job at once instead of spending
`backoffLimit` retries on it. Any other non-zero code (1: an unexpected error, 137: killed) is
retried. The precise reason (e.g. InsufficientData vs DataInvalid, both code 3) is in the
TrainerResult the trainer writes into its termination message; the code alone is the fallback.

| code | meaning                              | reason (status.reason)          | retried |
|------|--------------------------------------|---------------------------------|---------|
| 0    | finished (gates decided by operator) | -                               | -       |
| 1    | unexpected error                     | TrainerError                    | yes     |
| 3    | data invalid / insufficient          | DataInvalid / InsufficientData  | no      |
| 4    | training diverged (NaN/inf loss)     | Diverged                        | no      |
| 5    | model/adapter unavailable            | ModelUnavailable                | no      |
| 6    | trainer config invalid               | InvalidSpec                     | no      |
| 137  | SIGKILL (OOMKilled when the kubelet says so) | OutOfMemory / TrainerError | yes  |
"""

from enum import IntEnum

from kubetune.api.enums import Reason


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1
    DATA_INVALID = 3  # also InsufficientData: the termination message says which
    DIVERGED = 4
    MODEL_UNAVAILABLE = 5
    CONFIG_INVALID = 6


PERMANENT_EXIT_CODES: tuple[int, ...] = (
    ExitCode.DATA_INVALID,
    ExitCode.DIVERGED,
    ExitCode.MODEL_UNAVAILABLE,
    ExitCode.CONFIG_INVALID,
)
"""Exit codes after which a retry cannot help: the podFailurePolicy fails the Job at once."""

REASON_BY_EXIT_CODE: dict[int, str] = {
    ExitCode.ERROR: Reason.TRAINER_ERROR,
    ExitCode.DATA_INVALID: Reason.DATA_INVALID,
    ExitCode.DIVERGED: Reason.DIVERGED,
    ExitCode.MODEL_UNAVAILABLE: Reason.MODEL_UNAVAILABLE,
    ExitCode.CONFIG_INVALID: Reason.INVALID_SPEC,
}

EXIT_CODE_BY_REASON: dict[str, int] = {
    Reason.DATA_INVALID: ExitCode.DATA_INVALID,
    Reason.INSUFFICIENT_DATA: ExitCode.DATA_INVALID,
    Reason.DIVERGED: ExitCode.DIVERGED,
    Reason.MODEL_UNAVAILABLE: ExitCode.MODEL_UNAVAILABLE,
    Reason.INVALID_SPEC: ExitCode.CONFIG_INVALID,
}


def exit_code_for(reason: str | None) -> int:
    """The code the trainer exits with after failing with `reason` (1 for anything unlisted)."""
    return EXIT_CODE_BY_REASON.get(reason or "", ExitCode.ERROR)


def reason_for(exit_code: int) -> str:
    return REASON_BY_EXIT_CODE.get(exit_code, Reason.TRAINER_ERROR)
