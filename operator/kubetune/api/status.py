"""Observed state. Rebuilt from the world (Job, Pods, trainer reports) on every reconcile."""

from typing import Any, Literal

from pydantic import ConfigDict, Field
from pydantic.config import JsonDict

from kubetune.api.base import KubeModel
from kubetune.api.enums import Phase
from kubetune.api.model_cache import ModelCacheReport

# metav1.Condition's rules (k8s.io/apimachinery/pkg/apis/meta/v1/types.go), so that any client that
# reads our conditions as metav1.Condition — kstatus, Flux, Argo CD, controller-runtime — can.
TYPE_PATTERN = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
DATE_TIME: JsonDict = {"format": "date-time"}  # the API server checks RFC 3339


class Condition(KubeModel):
    """A Kubernetes condition, shaped as metav1.Condition. lastTransitionTime moves only when status flips."""

    type: str = Field(max_length=316, pattern=TYPE_PATTERN,
                      description="Ready, Valid, ResourcesFit, DependencyReady, DataValid, Training, Complete, GatesPassed, "
                                  "Suspended; Reconciling or Stalled (kstatus, docs/gitops.md); TrackingAvailable (spec.tracking).")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(min_length=1, max_length=1024, pattern=REASON_PATTERN,
                        description="CamelCase reason (docs/api.md lists them).")
    message: str = Field(default="", max_length=4096, description="Human-readable detail.")
    last_transition_time: str = Field(json_schema_extra=DATE_TIME, description="When status last changed (RFC 3339).")
    observed_generation: int | None = Field(default=None, ge=0, description="metadata.generation this condition was computed for.")


class Progress(KubeModel):
    step: int | None = Field(default=None, description="Optimizer steps done.")
    total_steps: int | None = Field(default=None, description="Optimizer steps planned.")
    epoch: float | None = Field(default=None, description="Epochs done (fractional).")
    loss: float | None = Field(default=None, description="Latest training loss.")
    learning_rate: float | None = Field(default=None, description="Current learning rate.")
    grad_norm: float | None = Field(default=None, description="Latest gradient norm.")
    tokens_per_second: float | None = Field(default=None, description="Training throughput over the last steps, all GPUs.")
    eta_seconds: float | None = Field(default=None, description="Estimated seconds to the end of training.")
    peak_gpu_memory_bytes: int | None = Field(default=None, description="Peak GPU memory allocated by the trainer.")
    stage: str | None = Field(default=None, max_length=32, description="preflight | loading | training | evaluating | exporting | done.")
    attempt: int | None = Field(default=None, ge=1, description=(
        "Which start of the trainer this is for this output: 2 after a pod was restarted (deleted, preempted, evicted)."))
    resumed_from_step: int | None = Field(default=None, ge=0, description=(
        "The step of the checkpoint this start resumed from; absent when it started at step 0."))
    summary: str | None = Field(default=None, max_length=64, description="Short form for printer columns, e.g. 60% (120/200).")
    updated_at: str | None = Field(default=None, description="When the trainer reported this (RFC 3339).")


class GateResult(KubeModel):
    metric: str = Field(description="Metric name.")
    op: str = Field(description="Comparison.")
    threshold: float = Field(description="Threshold from the spec.")
    value: float | None = Field(default=None, description="Measured value; absent when not measured (the gate then fails).")
    passed: bool = Field(description="Whether this gate passed.")
    message: str | None = Field(default=None, max_length=1024, description="Why it failed, when it did.")


class CheckpointMetrics(KubeModel):
    """One checkpoint evaluation: a step and what the cheap evaluation measured there."""

    step: int = Field(ge=0, description="Optimizer step of the checkpoint.")
    metrics: dict[str, float] = Field(default_factory=dict, description=(
        "Metrics on spec.evaluation.checkpoints.examples examples of each set (golden.accuracy, ...)."))
    passed: bool = Field(description="Whether every gate whose metric was measured here passed.")
    failed: list[str] | None = Field(default=None, max_length=32, description="The gates that failed here, by metric.")


class CheckpointSelection(KubeModel):
    """The checkpoint evaluations of a run and the step promoted (spec.evaluation.checkpoints)."""

    select_by: str = Field(description="The metric checkpoints were ranked by.")
    evaluations: list[CheckpointMetrics] = Field(default_factory=list, max_length=1000, description=(
        "One row per evaluated checkpoint, in step order."))
    chosen_step: int | None = Field(default=None, ge=0, description=(
        "The step whose weights became the artifact (and, when every gate passed in full, were promoted)."))
    last_step: int | None = Field(default=None, ge=0, description="The last step trained.")
    stopped_early: bool = Field(default=False, description="Training stopped early: selectBy stopped improving (patience).")
    reason: str | None = Field(default=None, max_length=1024, description="Why this step was chosen.")


class Artifact(KubeModel):
    uri: str | None = Field(default=None, description="Where the trained adapter/weights are.")
    promoted: bool = Field(default=False, description="True once every gate passed and the artifact was promoted.")
    promoted_uri: str | None = Field(default=None, description="Where the promoted copy is.")
    manifest_digest: str | None = Field(default=None, description=(
        "sha256:<hex> of the promoted folder's kubetune-manifest.json (every file with its size and sha256), "
        "which the trainer writes last."))


class InputFile(KubeModel):
    """One input file the model was trained or evaluated on."""

    name: str = Field(description="dataset, replay, golden, safety or forgetting.")
    uri: str = Field(description="Where it was read from.")
    size: int = Field(description="Size in bytes.")
    sha256: str = Field(description="sha256 of its bytes (hex).")


class SourceRevision(KubeModel):
    """Which version of a model or adapter folder was used."""

    uri: str = Field(description="Where it was read from.")
    revision: str = Field(description=(
        "The Hugging Face commit for hf://; otherwise sha256:<hex> of its config.json and weights index or "
        "file list (a model), or of its kubetune-manifest.json (an adapter)."))


class DataSummary(KubeModel):
    examples: int | None = Field(default=None, description="Valid examples after deduplication.")
    train: int | None = Field(default=None, description="Examples used for training.")
    validation: int | None = Field(default=None, description="Examples held out for validation.")
    invalid: int | None = Field(default=None, description="Malformed lines.")
    duplicates: int | None = Field(default=None, description="Duplicates dropped.")
    pii: dict[str, int] | None = Field(default=None, description="PII/PHI found, by type (redacted unless policy off).")
    truncated_fraction: float | None = Field(default=None, description="Share of examples longer than maxSeqLength.")
    replay: int | None = Field(default=None, ge=0, description=(
        "Replay examples mixed into training (spec.dataset.replay), after the replay set's own preflight."))
    inputs: list[InputFile] | None = Field(default=None, description="Each input file with its size and sha256.")
    base_model: SourceRevision | None = Field(default=None, description="The base model and its revision.")
    adapter: SourceRevision | None = Field(default=None, description="The adapter continued from, and its revision.")


class TrainingAttempt(KubeModel):
    """One start of the training with its configuration (spec.training.oomRetry)."""

    attempt: int = Field(ge=1, description="1 for the first run, 2 for the first retry, ...")
    job_name: str = Field(description="The batch/v1 Job of this attempt.")
    batch_size: int = Field(description="training.batchSize of this attempt.")
    gradient_accumulation_steps: int = Field(description="training.gradientAccumulationSteps of this attempt.")
    gradient_checkpointing: bool = Field(description="training.gradientCheckpointing of this attempt.")
    plan: str | None = Field(default=None, description="The memory plan for this configuration, in words.")
    plan_fits: bool | None = Field(default=None, description="Whether that plan fits (absent: could not plan).")
    reason: str | None = Field(default=None, description="How it ended: OutOfMemory for a retried attempt.")
    message: str | None = Field(default=None, max_length=4096, description="Why it ended, in words.")


class TrackingStatus(KubeModel):
    """Where the run was logged (spec.tracking)."""

    run_id: str | None = Field(default=None, description="The MLflow run id.")
    experiment_id: str | None = Field(default=None, description="The MLflow experiment id.")


class JobStatus(KubeModel):
    """Status of a FineTuneJob or PreferenceAlignment."""

    model_config = ConfigDict(extra="ignore")

    phase: Phase | None = Field(default=None, description="Pending, Validating, Waiting, Queued, Running, Evaluating, Succeeded, GateFailed, Failed or Suspended.")
    conditions: list[Condition] = Field(default_factory=list, description="Conditions keyed by type; Ready is what `kubectl wait` uses.",
                                        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})
    observed_generation: int | None = Field(default=None, ge=0, description="metadata.generation the status describes; 0 until the operator first wrote status.")
    plan: dict[str, Any] | None = Field(
        default=None, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
        description="Memory plan summary: peak, GPU memory (a CPU job: memory per pod, cpuOnly true), fits, breakdown.")
    data: DataSummary | None = Field(default=None, description="Data preflight counts.")
    progress: Progress | None = Field(default=None, description="Training progress, mirrored from the trainer.")
    metrics: dict[str, float] | None = Field(default=None, description="Evaluation metrics by name (golden.accuracy, ...).")
    gates: list[GateResult] | None = Field(default=None, description="Each gate with its measured value and verdict.")
    artifact: Artifact | None = Field(default=None, description="The trained artifact and its promotion.")
    model_cache: ModelCacheReport | None = Field(default=None, description=(
        "What the model cache (chart values modelCache) did for the base model: downloaded (bytes) or a hit, "
        "and the revision pinned; absent without a cache or for a pvc:// model (used in place)."))
    checkpoints: CheckpointSelection | None = Field(default=None, description=(
        "Checkpoint evaluations (spec.evaluation.checkpoints): the table of steps and metrics, and which step "
        "became the artifact and why."))
    job_name: str | None = Field(default=None, description="Name of the batch/v1 Job running the trainer.")
    attempts: int | None = Field(default=None, description="Trainer pods started so far.")
    training_attempts: list[TrainingAttempt] | None = Field(default=None, description=(
        "With spec.training.oomRetry: each attempt (a Job) with its configuration and plan, the current last."))
    tracking: TrackingStatus | None = Field(default=None, description="The experiment-tracking run (spec.tracking).")
    start_time: str | None = Field(default=None, json_schema_extra=DATE_TIME, description="When training started.")
    completion_time: str | None = Field(default=None, json_schema_extra=DATE_TIME,
                                        description="When the job reached a terminal phase.")
    reason: str | None = Field(default=None, max_length=1024, pattern=REASON_PATTERN,
                               description="CamelCase reason of the current phase (e.g. OutOfMemory).")
    message: str | None = Field(default=None, description="Human-readable detail of the current phase.")
