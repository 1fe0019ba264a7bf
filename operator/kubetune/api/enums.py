"""Enum-like values of the API. Each is a named type with documented constants."""

from enum import StrEnum


class Method(StrEnum):
    """How the weights are tuned."""

    QLORA = "qlora"  # LoRA adapters on a 4/8-bit quantized, frozen base (bitsandbytes)
    LORA = "lora"  # LoRA adapters on a 16-bit frozen base
    FULL = "full"  # every weight is trained


class AlignmentMethod(StrEnum):
    DPO = "dpo"  # Direct Preference Optimization (TRL DPOTrainer)


class QuantType(StrEnum):
    NF4 = "nf4"
    FP4 = "fp4"


class ComputeDtype(StrEnum):
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"
    FLOAT32 = "float32"


class DatasetFormat(StrEnum):
    INSTRUCTION = "instruction"  # {"instruction", "input"?, "output"}
    CHAT = "chat"  # {"messages": [{"role", "content"}, ...]}
    PROMPT_COMPLETION = "prompt-completion"  # {"prompt", "completion"}
    PREFERENCE = "preference"  # {"prompt", "chosen", "rejected"} (PreferenceAlignment only)


class PiiPolicy(StrEnum):
    REDACT = "redact"
    REJECT = "reject"
    OFF = "off"


class ErrorPolicy(StrEnum):
    FAIL = "fail"
    SKIP = "skip"


class Optimizer(StrEnum):
    ADAMW_TORCH = "adamw_torch"
    ADAMW_8BIT = "adamw_8bit"
    PAGED_ADAMW_8BIT = "paged_adamw_8bit"
    PAGED_ADAMW_32BIT = "paged_adamw_32bit"
    ADAFACTOR = "adafactor"


CUDA_ONLY_OPTIMIZERS = frozenset({Optimizer.ADAMW_8BIT, Optimizer.PAGED_ADAMW_8BIT, Optimizer.PAGED_ADAMW_32BIT})
"""bitsandbytes' optimizers need CUDA: on CPU the trainer uses adamw_torch instead (and the planner plans so)."""


class LrScheduler(StrEnum):
    COSINE = "cosine"
    LINEAR = "linear"
    CONSTANT = "constant"
    CONSTANT_WITH_WARMUP = "constant_with_warmup"


class Scorer(StrEnum):
    EXACT_MATCH = "exact_match"
    CONTAINS = "contains"
    ROUGE_L = "rouge_l"
    F1 = "f1"


class GateOp(StrEnum):
    GE = ">="
    GT = ">"
    LE = "<="
    LT = "<"


class Metric(StrEnum):
    """The metrics a gate may name. The trainer's evaluation reports exactly these names."""

    GOLDEN_ACCURACY = "golden.accuracy"
    SAFETY_REFUSAL_RATE = "safety.refusal_rate"
    FORGETTING_PERPLEXITY_INCREASE = "forgetting.perplexity_increase"
    FORGETTING_ACCURACY_DROP = "forgetting.accuracy_drop"
    EVAL_LOSS = "eval.loss"
    EVAL_PERPLEXITY = "eval.perplexity"
    JUDGE_SCORE = "judge.score"
    # DPO: on the preference pairs' own validation split, against the reference the policy started from
    PREFERENCE_ACCURACY = "preference.accuracy"
    PREFERENCE_MARGIN = "preference.margin"


class DpoLossType(StrEnum):
    """Loss types TRL's DPOTrainer (trl 1.16) accepts."""

    SIGMOID = "sigmoid"
    HINGE = "hinge"
    IPO = "ipo"
    EXO_PAIR = "exo_pair"
    NCA_PAIR = "nca_pair"
    ROBUST = "robust"
    BCO_PAIR = "bco_pair"
    SPPO_HARD = "sppo_hard"
    APO_ZERO = "apo_zero"
    APO_DOWN = "apo_down"
    DISCOPOP = "discopop"
    SFT = "sft"


class ReferenceModel(StrEnum):
    IMPLICIT = "implicit"  # the policy with its adapter disabled: no second copy of the weights
    BASE = "base"  # an explicit second copy of the base model


class Phase(StrEnum):
    PENDING = "Pending"
    VALIDATING = "Validating"
    WAITING = "Waiting"  # for a dependency (PreferenceAlignment.spec.fineTuneJobRef)
    QUEUED = "Queued"  # Job created, pod not running yet (scheduling, Kueue admission, image pull)
    RUNNING = "Running"
    EVALUATING = "Evaluating"
    SUCCEEDED = "Succeeded"
    GATE_FAILED = "GateFailed"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


TERMINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.GATE_FAILED, Phase.FAILED})


class ConditionType(StrEnum):
    READY = "Ready"  # True only when Succeeded with every gate passed
    VALID = "Valid"  # spec passed semantic validation
    RESOURCES_FIT = "ResourcesFit"  # the memory plan fits resources.gpuMemory (a CPU job: resources.memory)
    DEPENDENCY_READY = "DependencyReady"  # PreferenceAlignment: the referenced FineTuneJob is Ready
    DATA_VALID = "DataValid"  # the data preflight passed (its own pod, before the GPU Job)
    TRAINING = "Training"  # the trainer is training now
    COMPLETE = "Complete"  # training and evaluation finished
    GATES_PASSED = "GatesPassed"  # every gate in spec.evaluation.gates passed
    SUSPENDED = "Suspended"
    # kstatus' (sigs.k8s.io/cli-utils) abnormal-true pair, what Flux and kubectl-based pipelines read:
    # exactly one is present and True until the job Succeeded, then neither (docs/gitops.md)
    RECONCILING = "Reconciling"  # the outcome is still open: validating, waiting, queued, running, suspended
    STALLED = "Stalled"  # Failed or GateFailed; reason and message say why
    TRACKING_AVAILABLE = "TrackingAvailable"  # spec.tracking: the run is logged (False: the server could not be used)


class Reason:
    """Documented reasons for conditions and status.reason (CamelCase, stable)."""

    # failures
    OUT_OF_MEMORY = "OutOfMemory"
    DIVERGED = "Diverged"
    DATA_INVALID = "DataInvalid"
    INSUFFICIENT_DATA = "InsufficientData"
    UNSCHEDULABLE = "Unschedulable"
    IMAGE_UNAVAILABLE = "ImageUnavailable"
    MODEL_UNAVAILABLE = "ModelUnavailable"
    GPU_UNAVAILABLE = "GPUUnavailable"  # a GPU job's pod sees no CUDA device (image, runtime or node)
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    GATES_FAILED = "GatesFailed"
    DEPENDENCY_FAILED = "DependencyFailed"
    INTERRUPTED = "Interrupted"
    INVALID_SPEC = "InvalidSpec"
    DOES_NOT_FIT = "DoesNotFit"
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
    TRAINER_ERROR = "TrainerError"
    # an s3:// location the job reads or writes cannot be used: the bucket is missing, the
    # credentials (spec.storage.secretRef) are wrong, or the endpoint cannot be reached
    STORAGE_UNAVAILABLE = "StorageUnavailable"
    # one rank of a torchrun job died by a signal (kill, crash, the OOM killer inside the pod) and torchrun
    # stopped the others; retried: the next pod resumes from the newest complete (sharded) checkpoint
    RANK_FAILED = "RankFailed"
    # progress / success
    GATES_PASSED = "GatesPassed"
    NO_GATES = "NoGates"
    SUCCEEDED = "Succeeded"
    VALIDATED = "Validated"
    FITS = "Fits"
    CANNOT_PLAN = "CannotPlan"
    WAITING_FOR_DEPENDENCY = "WaitingForDependency"
    DEPENDENCY_SUCCEEDED = "DependencySucceeded"
    JOB_CREATED = "JobCreated"
    CHECKING_DATA = "CheckingData"  # the data preflight pod (CPU only) is checking the data; no GPU requested yet
    PENDING_ADMISSION = "PendingAdmission"
    RUNNING = "Running"
    EVALUATING = "Evaluating"
    SUSPENDED = "Suspended"
    IN_PROGRESS = "InProgress"
    PREEMPTED = "Preempted"
    RETRYING_SMALLER = "RetryingSmaller"  # spec.training.oomRetry: an attempt ran out of memory; a smaller one starts
    TRACKED = "Tracked"  # spec.tracking: the trainer logged the run
    TRACKING_UNAVAILABLE = "TrackingUnavailable"  # spec.tracking: the server could not be used; training went on
