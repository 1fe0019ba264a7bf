"""Desired state of FineTuneJob and PreferenceAlignment.

Every field has a description: it becomes `kubectl explain` text. Bounds and enums are checked by
the API server (OpenAPI schema), cross-field rules by CEL (`x-kubernetes-validations`), and the
rest by the admission webhook (kubetune.api.semantics). Defaults that depend on the method are
filled in by kubetune.api.method_defaults where they are used (planner, renderer), not by the schema.
"""

from typing import Annotated, Any, Literal, cast

from pydantic import ConfigDict, Field
from pydantic.config import JsonDict

from kubetune.api.base import KubeModel, cel
from kubetune.api.enums import (
    AlignmentMethod,
    ComputeDtype,
    DpoLossType,
    ErrorPolicy,
    GateOp,
    LrScheduler,
    Method,
    Metric,
    Optimizer,
    PiiPolicy,
    QuantType,
    ReferenceModel,
    Scorer,
)
from kubetune.planning.parallelism import world_size as parallel_world_size

# Bounds on strings and lists keep the API server's CEL cost estimate within budget.
NAME = 253
URI = 2048
SHORT = 128
TEXT = 8192
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"
# CPU: cores ("2", "0.5") or millicores ("1500m"), as pods' resources take them.
CPU_QUANTITY_PATTERN = r"^([0-9]+m|[0-9]+(\.[0-9]+)?)$"
URI_PATTERN = r"^(hf|pvc|s3|file)://.+$"
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"

Uri = Annotated[str, Field(min_length=1, max_length=URI, pattern=URI_PATTERN)]

# Blocks whose every field is optional get `default: {}` so the API server fills nested defaults
# even when the block is left out (quantization and lora must not: CEL forbids them per method).
EMPTY_DEFAULT: JsonDict = {"default": {}}


def validations(*rules: dict[str, str]) -> JsonDict:
    """`x-kubernetes-validations` for a model's json_schema_extra."""
    return {"x-kubernetes-validations": cast(Any, list(rules))}


class SecretKeyRef(KubeModel):
    """A key in a Secret in the job's namespace. Only the reference is stored; the value never
    leaves the Secret (it reaches the trainer as an environment variable)."""

    name: str = Field(max_length=NAME, pattern=DNS_LABEL_PATTERN.replace("]*", ".]*"),
                      description="Name of the Secret, in the same namespace.")
    key: str = Field(max_length=NAME, min_length=1, description="Key inside the Secret.")


class SecretRef(KubeModel):
    """A Secret in the job's namespace, by name: all of its keys are used."""

    name: str = Field(max_length=NAME, pattern=DNS_LABEL_PATTERN.replace("]*", ".]*"),
                      description="Name of the Secret, in the same namespace.")


class Storage(KubeModel):
    """Access to object storage: every s3:// location of the job (base model, adapter, datasets,
    output, promotedUri) is read and written with these credentials."""

    secret_ref: SecretRef | None = Field(default=None, description=(
        "A Secret whose keys are the standard AWS variables: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
        "optionally AWS_SESSION_TOKEN, AWS_REGION and AWS_ENDPOINT_URL (an S3-compatible server). The trainer "
        "gets them as environment variables (envFrom); no value appears in the ConfigMap, status, Events or "
        "logs. `kubetune run` reads the same variables from its own environment. Without it the trainer "
        "uses whatever AWS credentials its environment provides."))


class BaseModelSource(KubeModel):
    """The pretrained model to start from."""

    uri: Uri = Field(description=(
        "Where the model is: hf://org/name (Hugging Face Hub), pvc://claim/path (a folder on a "
        "PersistentVolumeClaim in this namespace), s3://bucket/key, or file:///abs/path "
        "(only for `kubetune run`, the local executor)."))
    revision: str | None = Field(default=None, max_length=SHORT,
                                 description="Hub revision (branch, tag or commit) for hf:// models.")
    architecture: str | None = Field(default=None, max_length=SHORT, description=(
        "Catalog name of the architecture for the memory planner when the uri does not name a known "
        "model, e.g. llama-3-70b, qwen2.5-7b, mistral-7b (`kubetune plan --list-architectures`)."))
    token_secret_ref: SecretKeyRef | None = Field(default=None, description=(
        "Secret key holding the Hub (or S3) access token; passed to the trainer by reference."))


class Quantization(KubeModel):
    """How the frozen base is quantized for QLoRA (bitsandbytes)."""

    bits: Literal[4, 8] = Field(default=4, description="Storage precision of the base weights: 4 or 8 bits.")
    type: QuantType = Field(default=QuantType.NF4, description="4-bit data type: nf4 (NormalFloat, the QLoRA default) or fp4.")
    double_quant: bool = Field(default=True, description=(
        "Quantize the quantization constants too (saves ~0.37 bits per parameter)."))
    compute_dtype: ComputeDtype = Field(default=ComputeDtype.BFLOAT16, description=(
        "Dtype of the matmuls on dequantized weights; bfloat16 on GPUs that have it."))


class LoraConfig(KubeModel):
    """LoRA adapter shape (PEFT)."""

    r: int = Field(default=16, ge=1, le=4096, description="Rank of the adapter matrices; must be ≥ 1.")
    alpha: float = Field(default=32, gt=0, description="Scaling numerator; the update is scaled by alpha / r.")
    dropout: float = Field(default=0.05, ge=0, lt=1, description="Dropout on the adapter input, in [0, 1).")
    target_modules: list[Annotated[str, Field(min_length=1, max_length=SHORT)]] = Field(
        default_factory=lambda: ["all-linear"], min_length=1, max_length=64,
        json_schema_extra={"default": cast(Any, ["all-linear"])},
        description="Module names to adapt, e.g. [q_proj, v_proj]; all-linear adapts every linear layer but lm_head.")


class Dataset(KubeModel):
    """Training data and how it is checked before any GPU is held (the data preflight)."""

    uri: Uri = Field(description="JSONL, JSON array or gzip of either: hf://, pvc://, s3:// or file://.")
    format: str = Field(description="Record format.")  # narrowed per kind below
    validation_split: float = Field(default=0.05, ge=0, le=0.5, description=(
        "Share of examples held out for eval.loss / eval.perplexity, in [0, 0.5]; seeded, deterministic."))
    min_examples: int = Field(default=200, ge=1, description=(
        "Fewer valid examples than this (after deduplication) fails with InsufficientData."))
    pii: PiiPolicy = Field(default=PiiPolicy.REDACT, description=(
        "PII/PHI handling: redact (typed placeholders such as <EMAIL>), reject (fail, naming lines "
        "and types) or off."))
    error_policy: ErrorPolicy = Field(default=ErrorPolicy.FAIL, description=(
        "fail: any malformed line fails the job (all errors listed); skip: drop bad lines, fail only "
        "when more than 10% are bad."))
    near_duplicates: bool = Field(default=False, description=(
        "Also drop near-duplicates: examples whose 3-word shingles overlap an earlier kept example's "
        "by an estimated Jaccard similarity of 0.8 or more (MinHash; a system turn counts as one "
        "shingle). Exact and case/whitespace duplicates are always dropped."))


class Replay(KubeModel):
    """General data mixed into the training set (rehearsal), so the model keeps what it knew."""

    uri: Uri = Field(description=(
        "General instruction or chat data (JSONL, JSON array or gzip: hf://, pvc://, s3:// or file://) in "
        "spec.dataset.format. Checked by the data preflight like the main set (format, PII policy, duplicates, "
        "overlap with the golden set)."))
    ratio: float = Field(gt=0, le=0.9, description=(
        "Share of the training mix drawn from the replay set, in (0, 0.9]: with 0.2 and 300 training examples, "
        "75 replay examples join them (300 × 0.2 / 0.8). Drawn with the training seed, without repeats while the "
        "replay set lasts (it cycles when it is smaller). Replay examples are never in the validation split."))


class InstructionDataset(Dataset):
    format: Literal["instruction", "chat", "prompt-completion"] = Field(description=(
        "instruction {instruction, input?, output} | chat {messages: [{role, content}]} | "
        "prompt-completion {prompt, completion}."))
    replay: Replay | None = Field(default=None, description=(
        "Mix a general dataset into training at a ratio (the standard remedy for catastrophic forgetting)."))


class PreferenceDataset(Dataset):
    format: Literal["preference"] = Field(default="preference", description=(
        "preference: {prompt, chosen, rejected}, as strings or as chat messages."))


class OomRetry(KubeModel):
    """Retry an out-of-memory failure with a smaller configuration (kubetune.planning.oom_retry)."""

    max_retries: int = Field(ge=1, le=8, description=(
        "How many times a trainer that ran out of memory (OOMKilled, or CUDA out of memory) is started again "
        "with a smaller configuration: each retry halves training.batchSize and multiplies "
        "gradientAccumulationSteps by as much (the effective batch stays the same); the second retry, or the "
        "first when batchSize is already 1, turns on gradientCheckpointing instead when it is off. Each retry "
        "is a new Job (named <job>-a<attempt>) that resumes from the newest checkpoint in spec.output; "
        "status.trainingAttempts lists every attempt with its configuration and memory plan."))


class Training(KubeModel):
    """Hyperparameters. Unset fields take method-dependent defaults (docs/api.md, kubetune.api.method_defaults)."""

    epochs: float | None = Field(default=None, gt=0, le=1000, description="Passes over the data (default 3 for SFT, 1 for DPO).")
    max_steps: int | None = Field(default=None, ge=1, description="Stop after this many optimizer steps; overrides epochs.")
    learning_rate: float | None = Field(default=None, gt=0, le=1, description=(
        "Peak learning rate in (0, 1] (default 2e-4 for lora/qlora, 1e-5 for full, 5e-6 for DPO)."))
    batch_size: int | None = Field(default=None, ge=1, le=4096, description="Examples per GPU per step (default 4 for lora/qlora, 1 for full).")
    gradient_accumulation_steps: int | None = Field(default=None, ge=1, le=4096, description=(
        "Steps accumulated per optimizer update (default 4 for lora/qlora, 16 for full)."))
    max_seq_length: int = Field(default=2048, ge=16, le=1048576, description="Tokens per example; longer ones are truncated.")
    optimizer: Optimizer | None = Field(default=None, description=(
        "adamw_torch | adamw_8bit | paged_adamw_8bit | paged_adamw_32bit | adafactor (default "
        "paged_adamw_8bit for qlora, adamw_torch otherwise)."))
    lr_scheduler: LrScheduler = Field(default=LrScheduler.COSINE, description="Learning-rate schedule.")
    warmup_ratio: float = Field(default=0.03, ge=0, le=1, description="Share of steps spent warming up the learning rate.")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    gradient_checkpointing: bool = Field(default=True, description="Recompute activations in backward: less memory, ~30% more compute.")
    packing: bool = Field(default=False, description="Pack several short examples into one sequence (SFT only).")
    seed: int = Field(default=42, ge=0, description="Seed for the split, shuffling and initialisation.")
    oom_retry: OomRetry | None = Field(default=None, description=(
        "Off unless set: retry an out-of-memory failure with a smaller micro-batch (same effective batch), "
        "then gradient checkpointing, resuming from the last checkpoint."))


class Toleration(KubeModel):
    """A Kubernetes toleration for the trainer pods."""

    key: str | None = Field(default=None, max_length=NAME, description="Taint key.")
    operator: Literal["Exists", "Equal"] | None = Field(default=None, description="Exists or Equal.")
    value: str | None = Field(default=None, max_length=SHORT, description="Taint value (with Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(default=None, description="Taint effect.")
    toleration_seconds: int | None = Field(default=None, description="How long a NoExecute taint is tolerated.")


class Resources(KubeModel):
    """Where and on what the trainer runs. `gpus: 0` is a CPU job (small models, pipeline tests)."""

    model_config = ConfigDict(json_schema_extra=validations(
        # has(): the API server also checks these rules against the schema's `default: {}`
        cel("!has(self.gpus) || self.gpus > 0 || has(self.memory)",
            "a CPU job (gpus 0) needs resources.memory so the plan can be checked against the pod's memory limit",
            ".memory"),
    ))

    gpus: int = Field(default=1, ge=0, le=64, description=(
        "GPUs per node (nvidia.com/gpu); > 1 runs torchrun with one process per GPU. 0 is a CPU job: no GPU "
        "request, toleration or GPU-memory affinity, the trainer runs on CPU (one gloo process per pod when nodes > 1), "
        "and the memory plan is checked against resources.memory (then required)."))
    nodes: int = Field(default=1, ge=1, le=256, description="Nodes; > 1 renders an Indexed Job with a headless Service for torchrun.")
    gpu_memory: str = Field(default="80Gi", pattern=QUANTITY_PATTERN, max_length=SHORT, description=(
        "Memory per GPU, a quantity (80Gi); the memory plan must fit it and pods land only on GPUs with at least "
        "this much. Ignored when gpus is 0."))
    node_selector: dict[str, Annotated[str, Field(max_length=SHORT)]] | None = Field(
        default=None, max_length=32, description="Extra node labels the trainer pods require.")
    tolerations: list[Toleration] | None = Field(default=None, max_length=32, description="Extra tolerations for the trainer pods.")
    priority_class_name: str | None = Field(default=None, max_length=NAME, description="PriorityClass of the trainer pods.")
    cpu: str | None = Field(default=None, pattern=CPU_QUANTITY_PATTERN, max_length=SHORT,
                            description="CPU request and limit per pod, in cores or millicores, e.g. 8 or 1500m.")
    memory: str | None = Field(default=None, pattern=QUANTITY_PATTERN, max_length=SHORT, description=(
        "Memory request and limit per pod, e.g. 64Gi. Required when gpus is 0: a CPU job's memory plan is "
        "checked against it."))
    unschedulable_grace_seconds: int | None = Field(default=None, ge=0, le=7 * 24 * 3600, description=(
        "Seconds a pod of this job may stay unschedulable before the job fails Unschedulable (default: the "
        "operator's, 120 s). While the cluster autoscaler reports a scale-up for the pod (its TriggeredScaleUp "
        "event, for up to 15 min) the job keeps waiting past it; the status message says what it waits for."))

    @property
    def cpu_only(self) -> bool:
        """`gpus: 0`: the trainer runs on CPU, one process per pod (gloo across `nodes` pods)."""
        return self.gpus == 0

    @property
    def world_size(self) -> int:
        """Trainer processes in all: one per GPU, or one per pod for a CPU job."""
        return parallel_world_size(self.gpus, self.nodes)


class GoldenDataset(KubeModel):
    """A held-out set of prompts with reference answers, never trained on."""

    uri: Uri = Field(description="JSONL of {prompt, answer} (or instruction/output); checked for overlap with the training data.")
    scorer: Scorer = Field(default=Scorer.EXACT_MATCH, description="exact_match | contains | rouge_l | f1 over greedy generations.")


class UriRef(KubeModel):
    uri: Uri = Field(description="JSONL file location.")


class Judge(KubeModel):
    """An LLM judge reached through an OpenAI-compatible chat completions endpoint."""

    endpoint: str = Field(max_length=URI, pattern=r"^https?://.+$", description="Base URL, e.g. https://llm.internal/v1.")
    model: str = Field(max_length=SHORT, min_length=1, description="Model name sent to the endpoint.")
    api_key_secret_ref: SecretKeyRef | None = Field(default=None, description="Secret key holding the API key (never logged or stored in status).")
    rubric: str | None = Field(default=None, max_length=TEXT, description="What the judge scores, appended to its instructions; scores are 1-10.")


class Gate(KubeModel):
    """One promotion condition on a measured metric."""

    metric: Metric = Field(description=(
        "golden.accuracy | safety.refusal_rate | forgetting.perplexity_increase | "
        "forgetting.accuracy_drop | eval.loss | eval.perplexity | judge.score | preference.accuracy | "
        "preference.margin (the last two: DPO only, on the pairs' validation split)."))
    op: GateOp = Field(description="Comparison: >=, >, <= or <.")
    threshold: float = Field(description="The value compared with.")


_GATE_NEEDS = {
    "golden.accuracy": "goldenDataset",
    "safety.refusal_rate": "safetyDataset",
    "forgetting.perplexity_increase": "forgettingDataset",
    "forgetting.accuracy_drop": "forgettingDataset",
    "judge.score": "judge",
}


class CheckpointEvaluation(KubeModel):
    """Evaluate intermediate checkpoints cheaply and promote the best one that passes the gates."""

    every_steps: int = Field(ge=1, description=(
        "Evaluate the model every this many optimizer steps, and at the last step."))
    examples: int = Field(default=10, ge=1, le=10000, description=(
        "How many examples of each evaluation set a checkpoint evaluation uses: N of the golden, safety and "
        "validation sets, and of the forgetting set's texts and questions, spread evenly over each file (every "
        "(size/N)-th). The chosen checkpoint is then evaluated in full."))
    select_by: Metric = Field(description=(
        "The metric that ranks checkpoints; higher is better for accuracies, rates and scores, lower for "
        "losses, perplexities, increases and drops. Among the checkpoints that pass every gate whose metric "
        "the checkpoint evaluation measures, the best by this metric is chosen (ties: the later step); when "
        "none passes, the best of all (its full evaluation then decides the gates)."))
    patience: int | None = Field(default=None, ge=1, le=1000, description=(
        "Stop training early once selectBy has not improved for this many checkpoint evaluations in a row."))


class Evaluation(KubeModel):
    """What is measured after training and which gates decide promotion."""

    model_config = ConfigDict(json_schema_extra=validations(*(
        cel(f"!has(self.gates) || self.gates.all(g, g.metric != '{metric}' || has(self.{needs}))",
            f"a gate on {metric} needs spec.evaluation.{needs}", ".gates")
        for metric, needs in _GATE_NEEDS.items()
    ), *(
        cel(f"!has(self.checkpoints) || self.checkpoints.selectBy != '{metric}' || has(self.{needs})",
            f"checkpoints.selectBy {metric} needs spec.evaluation.{needs}", ".checkpoints.selectBy")
        for metric, needs in _GATE_NEEDS.items()
    )))

    golden_dataset: GoldenDataset | None = Field(default=None, description="Golden set for golden.accuracy.")
    safety_dataset: UriRef | None = Field(default=None, description=(
        "Prompts the model must decline (JSONL of {prompt}) for safety.refusal_rate."))
    forgetting_dataset: UriRef | None = Field(default=None, description=(
        "General text (JSONL of {text}, optionally {prompt, answer}) for forgetting.* against the base model."))
    judge: Judge | None = Field(default=None, description=(
        "Optional LLM judge: judge.score, and a second opinion on each safety.refusal_rate verdict."))
    max_new_tokens: int = Field(default=64, ge=1, le=4096, description="Generation bound for golden, safety and judge prompts.")
    gates: list[Gate] | None = Field(default=None, max_length=32, description=(
        "All must pass for phase Succeeded and Ready=True; otherwise GateFailed and nothing is promoted."))
    checkpoints: CheckpointEvaluation | None = Field(default=None, description=(
        "Evaluate intermediate checkpoints on a subset of the sets above and promote the best that passes the "
        "gates, not just the last; the table of steps and metrics goes to status.checkpoints and the report."))


class Output(KubeModel):
    """Where artifacts go."""

    uri: Uri = Field(description=(
        "Folder for checkpoints, the adapter/weights, the model card and result.json (pvc://, s3:// or file://). "
        "With s3:// the trainer works in a local folder (checkpoints stay there) and uploads the artifact at the "
        "end, its kubetune-manifest.json last."))
    promoted_uri: Uri | None = Field(default=None, description=(
        "Where the trainer copies the artifact when every gate passes (pvc://, s3:// or file://). The copy is "
        "complete once its kubetune-manifest.json (every file with its size and sha256) is there: it is written "
        "last, and status.artifact.promoted is true only after it was."))


class Checkpoint(KubeModel):
    """Checkpointing; a restarted pod resumes from the newest complete checkpoint."""

    every_steps: int = Field(default=100, ge=1, description="Save a checkpoint every this many optimizer steps.")
    keep_last: int = Field(default=2, ge=1, le=100, description="How many checkpoints to keep.")


class JobRef(KubeModel):
    name: str = Field(max_length=NAME, min_length=1, description="Name of a FineTuneJob in the same namespace.")


class AdapterSource(KubeModel):
    uri: Uri = Field(description="A PEFT adapter folder trained on spec.baseModel.")


class DpoConfig(KubeModel):
    """DPO hyperparameters (TRL DPOTrainer)."""

    beta: float = Field(default=0.1, gt=0, le=1, description="Strength of the KL penalty towards the reference, in (0, 1].")
    loss_type: DpoLossType = Field(default=DpoLossType.SIGMOID, description="TRL loss type: sigmoid (DPO), ipo, hinge, robust, ...")
    sft_weight: float | None = Field(default=None, ge=0, le=10, description=(
        "Weight of a supervised (negative log-likelihood) loss on the chosen answers, added to the preference "
        "loss (RPO; TRL's loss_type [lossType, sft]). DPO alone can lower the likelihood of the chosen answers "
        "along with the rejected ones, and a small model then drifts away from what SFT taught it. Unset or 0: off."))
    reference_model: ReferenceModel = Field(default=ReferenceModel.IMPLICIT, description=(
        "implicit: the policy with its adapter disabled (no extra memory); base: a second copy of the base model."))


class MlflowTracking(KubeModel):
    """An MLflow tracking server the trainer logs the run to."""

    tracking_uri: str = Field(min_length=1, max_length=URI, pattern=r"^https?://.+$", description=(
        "The tracking server, e.g. http://mlflow.mlops:5000 (MLFLOW_TRACKING_URI)."))
    experiment: str = Field(min_length=1, max_length=NAME, description=(
        "Experiment name (created when missing)."))
    credentials_secret: SecretRef | None = Field(default=None, description=(
        "A Secret whose keys are MLflow's own variables: MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, "
        "or MLFLOW_TRACKING_TOKEN. The trainer gets them as environment variables (envFrom); no value appears "
        "in the ConfigMap, status, Events or logs."))


class Tracking(KubeModel):
    """Experiment tracking. A tracking server that cannot be reached never fails the training: status gets
    the condition TrackingAvailable=False (reason TrackingUnavailable) and a Warning Event."""

    mlflow: MlflowTracking | None = Field(default=None, description=(
        "Log to MLflow: the parameters, the training curve (transformers' MLflow integration), the evaluation "
        "metrics and gate results, the memory plan and the model card (artifacts); status.tracking.runId "
        "names the run."))


class _CommonSpec(KubeModel):
    quantization: Quantization | None = Field(default=None, description="Quantization of the base (qlora only; defaults apply for qlora).")
    lora: LoraConfig | None = Field(default=None, description="LoRA adapter shape (lora/qlora only; defaults r 16, alpha 32, dropout 0.05, all-linear).")
    training: Training = Field(default_factory=Training, json_schema_extra=EMPTY_DEFAULT, description="Hyperparameters.")
    resources: Resources = Field(default_factory=Resources, json_schema_extra=EMPTY_DEFAULT, description="GPUs, nodes and placement.")
    evaluation: Evaluation | None = Field(default=None, description="Evaluation after training, and promotion gates.")
    output: Output = Field(description="Where checkpoints and artifacts go.")
    storage: Storage | None = Field(default=None, description=(
        "Credentials for s3:// locations. A PreferenceAlignment with fineTuneJobRef and no storage uses "
        "the referenced FineTuneJob's."))
    checkpoint: Checkpoint = Field(default_factory=Checkpoint, json_schema_extra=EMPTY_DEFAULT, description="Checkpoint frequency and retention.")
    suspend: bool = Field(default=False, description="Suspend the job (the only field that may change after creation); false resumes from the last checkpoint.")
    backoff_limit: int = Field(default=2, ge=0, le=10, description="Retries of a failed pod (not spent on permanent failures such as bad data).")
    active_deadline_seconds: int | None = Field(default=None, ge=1, description="Wall-clock limit of the training Job; then DeadlineExceeded.")
    queue_name: str | None = Field(default=None, max_length=SHORT, description="Kueue LocalQueue; the Job is created suspended for Kueue to admit.")
    tracking: Tracking | None = Field(default=None, description="Experiment tracking (MLflow).")


def _immutable_rules(fields: list[str]) -> list[dict[str, str]]:
    """Spec is immutable after creation except `suspend`: one transition rule per field, so the
    error names the field that changed."""
    return [
        cel(f"has(self.{f}) == has(oldSelf.{f}) && (!has(self.{f}) || self.{f} == oldSelf.{f})",
            "is immutable after creation (only spec.suspend may change)", f".{f}")
        for f in fields
    ]


_COMMON_FIELDS = ["quantization", "lora", "training", "resources", "evaluation", "output", "storage", "checkpoint",
                  "backoffLimit", "activeDeadlineSeconds", "queueName", "tracking"]


class FineTuneJobSpec(_CommonSpec):
    """Supervised fine-tuning of a base model on instruction, chat or prompt-completion data."""

    model_config = ConfigDict(json_schema_extra=validations(
        cel("!has(self.quantization) || self.method == 'qlora'", "is only allowed with method qlora", ".quantization"),
        cel("!has(self.lora) || self.method in ['lora', 'qlora']", "is only allowed with method lora or qlora", ".lora"),
        *_immutable_rules(["baseModel", "method", "dataset", *_COMMON_FIELDS]),
    ))

    base_model: BaseModelSource = Field(description="The pretrained model to fine-tune.")
    method: Method = Field(description="qlora (4/8-bit base + LoRA), lora (16-bit base + LoRA) or full (all weights).")
    dataset: InstructionDataset = Field(description="Training data.")


class PreferenceAlignmentSpec(_CommonSpec):
    """Preference alignment (DPO), usually chained on a FineTuneJob's adapter."""

    model_config = ConfigDict(json_schema_extra=validations(
        cel("has(self.fineTuneJobRef) != has(self.baseModel)", "exactly one of spec.fineTuneJobRef or spec.baseModel must be set"),
        cel("!has(self.adapter) || has(self.baseModel)", "goes with spec.baseModel (a fineTuneJobRef brings its own adapter)", ".adapter"),
        cel("!has(self.fineTuneJobRef) || (!has(self.tuning) && !has(self.quantization) && !has(self.lora))",
            "with spec.fineTuneJobRef, tuning, quantization and lora come from the referenced FineTuneJob; remove them", ".fineTuneJobRef"),
        cel("!has(self.quantization) || !has(self.tuning) || self.tuning == 'qlora'", "is only allowed with tuning qlora", ".quantization"),
        cel("!has(self.lora) || !has(self.tuning) || self.tuning in ['lora', 'qlora']", "is only allowed with tuning lora or qlora", ".lora"),
        *_immutable_rules(["fineTuneJobRef", "baseModel", "adapter", "method", "tuning", "dpo", "dataset", *_COMMON_FIELDS]),
    ))

    fine_tune_job_ref: JobRef | None = Field(default=None, description=(
        "Start from this FineTuneJob's adapter (same namespace); waits until it Succeeded with gates passed."))
    base_model: BaseModelSource | None = Field(default=None, description="Start from this model instead of a FineTuneJob.")
    adapter: AdapterSource | None = Field(default=None, description="An existing adapter on spec.baseModel to continue from.")
    method: AlignmentMethod = Field(description="Alignment algorithm: dpo.")
    tuning: Method | None = Field(default=None, description=(
        "Which weights DPO updates: qlora, lora or full (default: the referenced job's method, else lora)."))
    dpo: DpoConfig = Field(default_factory=DpoConfig, json_schema_extra=EMPTY_DEFAULT, description="DPO hyperparameters.")
    dataset: PreferenceDataset = Field(description="Preference pairs: prompt, chosen, rejected.")
