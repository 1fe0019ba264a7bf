"""Semantic rules: what the schema and CEL cannot say, shared by `kubetune validate`, the
admission webhook and the operator (so all three give the same verdict)."""

from collections.abc import Callable

from kubetune.api.enums import DpoLossType, Metric
from kubetune.api.method_defaults import resolve, tuning_method
from kubetune.api.problems import Problem
from kubetune.api.resources import AnyJob, PreferenceAlignment
from kubetune.api.spec import FineTuneJobSpec
from kubetune.planning.parallelism import unsupported

# Metrics that are ratios in [0, 1]; judge scores are 1..10; losses and perplexity are ≥ 0.
_RANGES: dict[str, tuple[float, float]] = {
    Metric.GOLDEN_ACCURACY: (0.0, 1.0),
    Metric.SAFETY_REFUSAL_RATE: (0.0, 1.0),
    Metric.FORGETTING_ACCURACY_DROP: (-1.0, 1.0),
    Metric.FORGETTING_PERPLEXITY_INCREASE: (-1.0, float("inf")),
    Metric.EVAL_LOSS: (0.0, float("inf")),
    Metric.EVAL_PERPLEXITY: (1.0, float("inf")),
    Metric.JUDGE_SCORE: (1.0, 10.0),
    Metric.PREFERENCE_ACCURACY: (0.0, 1.0),
    Metric.PREFERENCE_MARGIN: (float("-inf"), float("inf")),
}
_PREFERENCE_METRICS = (Metric.PREFERENCE_ACCURACY, Metric.PREFERENCE_MARGIN)
_VALIDATION_METRICS = (Metric.EVAL_LOSS, Metric.EVAL_PERPLEXITY, *_PREFERENCE_METRICS)

LOCAL_ONLY = "file:// works only with `kubetune run`; in a cluster use pvc://, hf:// or s3://"
# file:///abs/path is absolute; file://rel/path is relative to the manifest's folder (local runs).

# Looks up a FineTuneJob spec by name in the same namespace (the files given, or the cluster).
RefLookup = Callable[[str], FineTuneJobSpec | None]


def _gate_can_pass(op: str, threshold: float, low: float, high: float) -> bool:
    if op == ">=":
        return threshold <= high
    if op == ">":
        return threshold < high
    if op == "<=":
        return threshold >= low
    return threshold > low


def _uris(job: AnyJob) -> list[tuple[str, str]]:
    spec = job.spec
    found = [("spec.dataset.uri", spec.dataset.uri), ("spec.output.uri", spec.output.uri)]
    replay = getattr(spec.dataset, "replay", None)  # FineTuneJob only
    if replay is not None:
        found.append(("spec.dataset.replay.uri", replay.uri))
    if spec.base_model is not None:
        found.append(("spec.baseModel.uri", spec.base_model.uri))
    if spec.output.promoted_uri:
        found.append(("spec.output.promotedUri", spec.output.promoted_uri))
    if isinstance(job, PreferenceAlignment) and job.spec.adapter is not None:
        found.append(("spec.adapter.uri", job.spec.adapter.uri))
    ev = spec.evaluation
    if ev is not None:
        for name, ref in (("goldenDataset", ev.golden_dataset), ("safetyDataset", ev.safety_dataset),
                          ("forgettingDataset", ev.forgetting_dataset)):
            if ref is not None:
                found.append((f"spec.evaluation.{name}.uri", ref.uri))
    return found


def semantic_problems(job: AnyJob, *, local: bool, lookup: RefLookup | None = None) -> list[Problem]:
    """`local`: checking for `kubetune run` (file:// allowed) rather than for a cluster."""
    problems: list[Problem] = []
    spec = job.spec
    local_paths = [path for path, uri in _uris(job) if uri.startswith("file://")]
    if local_paths and not local:
        others = f" (also {', '.join(local_paths[1:])})" if len(local_paths) > 1 else ""
        problems.append(Problem(local_paths[0], LOCAL_ONLY + others, "warning"))
    ev = spec.evaluation
    for i, gate in enumerate(ev.gates or [] if ev else []):
        low, high = _RANGES[gate.metric]
        if not _gate_can_pass(gate.op, gate.threshold, low, high):
            problems.append(Problem(f"spec.evaluation.gates[{i}].threshold",
                                    f"gate {gate.metric} {gate.op} {gate.threshold:g} can never pass: "
                                    f"{gate.metric} is within [{low:g}, {high:g}]"))
        problems += _metric_problems(job, gate.metric, f"spec.evaluation.gates[{i}].metric")
    if ev is not None and ev.checkpoints is not None:
        problems += _metric_problems(job, ev.checkpoints.select_by, "spec.evaluation.checkpoints.selectBy")
        steps = spec.training.max_steps
        if steps is not None and ev.checkpoints.every_steps >= steps:
            problems.append(Problem("spec.evaluation.checkpoints.everySteps",
                                    f"{ev.checkpoints.every_steps} ≥ training.maxSteps ({steps}): only the last step "
                                    "is evaluated, so there is nothing to choose from", "warning"))
    if spec.training.max_steps is None and spec.training.epochs is not None and spec.training.epochs > 100:
        problems.append(Problem("spec.training.epochs", "more than 100 epochs will overfit; did you mean maxSteps?", "warning"))
    if spec.training.oom_retry is not None:
        t = resolve(spec).training  # type: ignore[type-var]
        if t.batch_size == 1 and t.gradient_checkpointing:
            problems.append(Problem("spec.training.oomRetry", (
                "nothing smaller to retry with: batchSize is 1 and gradientCheckpointing is on (a retry halves the "
                "micro-batch or turns checkpointing on)"), "warning"))
    if spec.checkpoint.keep_last > 10:
        problems.append(Problem("spec.checkpoint.keepLast", "each checkpoint of a large model takes disk; keeping more than 10 is rarely useful", "warning"))
    problems += _parallelism_problems(job, lookup)
    if isinstance(job, PreferenceAlignment):
        if spec.training.packing:
            problems.append(Problem("spec.training.packing", "packing is not supported for DPO (chosen and rejected must stay aligned)"))
        if (job.spec.dpo.sft_weight or 0) > 0 and job.spec.dpo.loss_type == DpoLossType.SFT:
            problems.append(Problem("spec.dpo.sftWeight", "lossType is already sft: an sftWeight adds the same loss twice"))
        ref = job.spec.fine_tune_job_ref
        if ref is not None and lookup is not None and lookup(ref.name) is None:
            problems.append(Problem("spec.fineTuneJobRef.name",
                                    f"no FineTuneJob {ref.name!r} found here; it must exist in the same namespace before this can run",
                                    "warning"))
    return problems


def _parallelism_problems(job: AnyJob, lookup: RefLookup | None) -> list[Problem]:
    """What the trainer cannot run over resources.gpus × resources.nodes ranks
    (kubetune.planning.parallelism, the decision the planner and the trainer share)."""
    referenced = None
    if isinstance(job, PreferenceAlignment) and job.spec.fine_tune_job_ref is not None and lookup is not None:
        referenced = lookup(job.spec.fine_tune_job_ref.name)
    method = str(tuning_method(job.spec, referenced))
    why = unsupported(method=method, world_size=job.spec.resources.world_size, dpo=isinstance(job, PreferenceAlignment))
    if why is None:
        return []
    field = "spec.resources.gpus" if job.spec.resources.gpus > 1 else "spec.resources.nodes"
    return [Problem(field, why)]


def _metric_problems(job: AnyJob, metric: str, path: str) -> list[Problem]:
    """A metric a gate or checkpoints.selectBy names that this job can never measure."""
    if metric in _PREFERENCE_METRICS and not isinstance(job, PreferenceAlignment):
        return [Problem(path, f"{metric} is measured for a PreferenceAlignment (DPO) only")]
    if metric in _VALIDATION_METRICS and job.spec.dataset.validation_split == 0:
        return [Problem(path, f"{metric} needs a validation split; spec.dataset.validationSplit is 0")]
    return []
