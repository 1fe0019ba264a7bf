"""The operator ↔ trainer contract (versioned). See docs/trainer-channel.md.

- TrainerConfig: rendered by the operator (or `kubetune run`) into a ConfigMap mounted at
  /etc/kubetune/config.json (locally: a file), read by the trainer's entry point.
- Progress: reported often — patched as the `kubetune.io/progress` annotation on the trainer's
  own Pod (RBAC: patch pods in its namespace, narrowed to its own pod by the chart's admission
  policy), written to progress.json on the output volume, and served as Prometheus metrics by the trainer.
- TrainerResult: reported once, reliably — the compact form (≤ 4 KiB) in the container
  termination message, the full form as result.json on the output volume.
No secret value ever appears here: secrets reach the trainer as environment variables whose
*names* the config carries.
"""

import json
from pathlib import PurePath, PurePosixPath
from typing import Any, Literal

from pydantic import Field, ValidationInfo, ValidatorFunctionWrapHandler, field_validator, model_validator

from kubetune.api.base import KubeModel
from kubetune.api.model_cache import ModelCacheConfig, ModelCacheReport
from kubetune.api.resources import SPEC_MODELS
from kubetune.api.spec import FineTuneJobSpec, PreferenceAlignmentSpec
from kubetune.api.status import CheckpointSelection, DataSummary, Progress

CONFIG_API_VERSION = "kubetune.io/trainer-config/v1"
RESULT_API_VERSION = "kubetune.io/trainer-result/v1"
TERMINATION_MESSAGE_LIMIT = 4096  # bytes; the kubelet truncates beyond this

Task = Literal["sft", "dpo"]

# Exit status of the trainer process, for the Job's podFailurePolicy: permanent failures (bad
# data, a missing model, divergence, OOM at the planned size, a GPU job whose pod sees no GPU: a
# retry gets the same image and runtime) should fail the Job at once instead of spending retries;
# TrainerError and Interrupted (SIGTERM, 128+15) may be retried (the retry resumes from the newest
# complete checkpoint). 2 is a bad command line or config file.
EXIT_CODES: dict[str, int] = {
    "TrainerError": 1,
    "DataInvalid": 3,
    "InsufficientData": 3,
    "ModelUnavailable": 4,
    "Diverged": 5,
    "OutOfMemory": 6,
    "GPUUnavailable": 7,
    "StorageUnavailable": 8,
    "RankFailed": 9,
    "Interrupted": 143,
}
EXIT_USAGE = 2
CHECKED_DATA_DIR = "kubetune/preflight"  # below the output: the data preflight stage's files (Sources.checked_data)


class JobIdentity(KubeModel):
    kind: Literal["FineTuneJob", "PreferenceAlignment"]
    name: str
    namespace: str = "default"
    uid: str | None = None


class Sources(KubeModel):
    """Resolved locations: local paths (a mounted PVC, a file:// path) or hf:// / s3:// URIs."""

    model: str
    model_revision: str | None = None
    adapter: str | None = None  # DPO: the adapter to continue from (a FineTuneJob's artifact)
    dataset: str
    output: str  # a local folder (the output volume, a local path, or where an s3:// output is staged)
    # The URI `output` stands for when it is not spec.output.uri: `kubetune run` sets
    # file://<folder> (its --output-root moves the output). The trainer reports its artifact under it.
    output_uri: str | None = None
    # Where the trainer copies the artifact when every gate passes: a local folder (a mounted PVC, a
    # file:// path) or an s3:// URI; `promoted_uri` is the URI it stands for (status shows it), else
    # spec.output.promotedUri.
    promoted: str | None = None
    promoted_uri: str | None = None
    golden: str | None = None
    safety: str | None = None
    forgetting: str | None = None
    replay: str | None = None  # spec.dataset.replay.uri, resolved like dataset
    # Where the data preflight stage (`kubetune-trainer --stage preflight`, its own CPU pod) writes the
    # checked, redacted splits, its report and its result, and where training reads them without a
    # second scan: `<output>/kubetune/preflight` (a local folder, or an s3:// URI). Unset: the trainer
    # runs the preflight itself as its first step (a config from an operator that predates the pod).
    checked_data: str | None = None


class PlanSummary(KubeModel):
    """What the planner predicted, so an OOM can be explained with the estimate."""

    peak_bytes: int | None = None
    gpu_memory_bytes: int | None = None
    memory_bytes: int | None = None  # a CPU job's limit (resources.memory) instead of gpu_memory_bytes
    fits: bool | None = None
    summary: str | None = None
    best_suggestion: str | None = None


class ReportChannel(KubeModel):
    pod_annotations: bool = False  # patch kubetune.io/progress on $POD_NAMESPACE/$POD_NAME
    progress_file: str | None = None  # defaults to <output>/kubetune/progress.json
    termination_log: str | None = None  # /dev/termination-log in a pod
    metrics_port: int | None = None  # Prometheus /metrics of the trainer; None = off
    interval_seconds: float = 10.0  # at most one annotation patch per interval


class SecretEnv(KubeModel):
    """Names of environment variables that hold secrets (set from Secrets by the pod spec)."""

    hf_token: str | None = None
    judge_api_key: str | None = None


class TrainerConfig(KubeModel):
    """Everything the trainer needs to run one job; `spec` is the resolved spec of `job.kind`."""

    api_version: Literal["kubetune.io/trainer-config/v1"] = Field(default="kubetune.io/trainer-config/v1", alias="apiVersion")
    job: JobIdentity
    task: Task
    spec: FineTuneJobSpec | PreferenceAlignmentSpec = Field(description=(
        "The resolved spec (kubetune.api.method_defaults.resolve): a FineTuneJobSpec or a PreferenceAlignmentSpec, "
        "as job.kind says."))
    sources: Sources
    plan: PlanSummary = Field(default_factory=PlanSummary)
    report: ReportChannel = Field(default_factory=ReportChannel)
    secret_env: SecretEnv = Field(default_factory=SecretEnv)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    world_size: int = 1
    model_cache: ModelCacheConfig | None = Field(default=None, description=(
        "The shared model cache (chart values modelCache): the preflight pod downloads an hf:// or s3:// base "
        "model into it, the trainer reads it from there. None: the trainer fetches the model itself."))
    merge_adapter: bool = Field(default=False, description=(
        "Also write merged weights next to the adapter (LoRA on a 16/32-bit base only; never for "
        "QLoRA, whose adapter belongs to the 4-bit base it was trained on)."))

    @field_validator("spec", mode="wrap")
    @classmethod
    def _spec_of_the_job_kind(cls, value: Any, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> Any:
        """The wire form carries no tag of its own: `job.kind` (validated before `spec`) picks the model,
        so errors name that kind's fields."""
        job = info.data.get("job")
        if isinstance(value, dict) and isinstance(job, JobIdentity):
            return SPEC_MODELS[job.kind].model_validate(value)
        return handler(value)

    @model_validator(mode="after")
    def _spec_matches_the_job_kind(self) -> "TrainerConfig":
        if not isinstance(self.spec, SPEC_MODELS[self.job.kind]):
            raise ValueError(f"spec is a {type(self.spec).__name__}, but job.kind is {self.job.kind}")
        return self

    def to_json(self) -> str:
        return json.dumps(self.model_dump(by_alias=True, exclude_none=True, mode="json"), indent=2, sort_keys=True)

    @property
    def output_uri(self) -> str:
        """The URI of the output (`sources.outputUri`, else spec.output.uri). When it is s3://,
        `sources.output` is a local working folder and the trainer uploads the artifact at the end."""
        return self.sources.output_uri or self.spec.output.uri

    @property
    def promoted_uri(self) -> str | None:
        """The URI of the promoted location (`sources.promotedUri`, else spec.output.promotedUri)."""
        return self.sources.promoted_uri or self.spec.output.promoted_uri

    def uri_of(self, path: str | PurePath) -> str | None:
        """A path the trainer wrote below `sources.output`, as a URI: `<output>/adapter` ⇒
        `<sources.outputUri, else spec.output.uri>/adapter`. None for a path elsewhere."""
        base = self.output_uri
        try:
            below = PurePosixPath(path).relative_to(PurePosixPath(self.sources.output))
        except ValueError:
            return None
        return child_uri(base, below.as_posix()) if base else None


def child_uri(base: str, relative: str) -> str:
    """`relative` (a path with `/`) below the URI `base`."""
    return base if relative in ("", ".") else base.rstrip("/") + "/" + relative


class Promotion(KubeModel):
    """A promotion the trainer finished: the artifact copied to `uri` and its kubetune-manifest.json
    (kubetune.api.manifest) written there last. Reported only once the manifest exists."""

    uri: str  # spec.output.promotedUri (or where `kubetune run --output-root` moved it)
    manifest_digest: str  # sha256:<hex> of the manifest's bytes
    files: int
    bytes: int


class ProgressReport(Progress):
    """Progress plus the data preflight summary once known, and (from the data preflight pod) the
    base model's download into the model cache while it runs."""

    data: DataSummary | None = None
    model_cache: ModelCacheReport | None = None


class TrackingReport(KubeModel):
    """spec.tracking: where the trainer logged the run, or why it could not (training went on)."""

    available: bool
    run_id: str | None = None
    experiment_id: str | None = None
    message: str | None = None  # no secret: the trainer removes credentials from error messages


class TrainerResult(KubeModel):
    api_version: Literal["kubetune.io/trainer-result/v1"] = Field(default="kubetune.io/trainer-result/v1", alias="apiVersion")
    outcome: Literal["succeeded", "failed"]
    reason: str | None = None  # a kubetune.api.enums.Reason value when failed
    message: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    data: DataSummary | None = None
    progress: Progress | None = None
    artifact: str | None = None  # folder of the adapter / weights, as the trainer sees it
    # The artifact as a URI below spec.output.uri (TrainerConfig.uri_of), what status.artifact.uri
    # shows. Optional: a trainer that predates it leaves it out (status then names the artifact
    # folder below spec.output.uri).
    artifact_uri: str | None = None
    merged: str | None = None
    # Set only when the trainer promoted the artifact (every gate passed, by kubetune.gates.
    # promotion_decision on this result) and the manifest is written; status.artifact.promoted
    # and promotedUri come from here and nowhere else.
    promotion: Promotion | None = None
    report_html: str | None = None
    tracking: TrackingReport | None = None  # spec.tracking: the MLflow run, or why there is none
    # spec.evaluation.checkpoints: the checkpoint table and the chosen step (status.checkpoints)
    checkpoints: CheckpointSelection | None = None
    details: dict[str, Any] = Field(default_factory=dict)  # the long tail: per-example eval, timings

    def to_json(self) -> str:
        return json.dumps(self.model_dump(by_alias=True, exclude_none=True, mode="json"), sort_keys=True)

    def termination_message(self) -> str:
        """Compact JSON within the kubelet's 4 KiB: details, then progress, then data, then the
        checkpoint table are dropped if needed, and the message is cut last."""
        payload = self.model_dump(by_alias=True, exclude_none=True, mode="json")
        for key in ("details", "progress", "data", "reportHtml", "checkpoints"):
            text = json.dumps(payload, separators=(",", ":"), sort_keys=True)
            if len(text.encode()) <= TERMINATION_MESSAGE_LIMIT:
                return text
            payload.pop(key, None)
        text = json.dumps(payload, separators=(",", ":"), sort_keys=True)
        while len(text.encode()) > TERMINATION_MESSAGE_LIMIT and payload.get("message"):
            payload["message"] = payload["message"][: len(payload["message"]) // 2] + "…"
            text = json.dumps(payload, separators=(",", ":"), sort_keys=True)
        return text

    @classmethod
    def parse(cls, text: str) -> "TrainerResult":
        return cls.model_validate_json(text)
