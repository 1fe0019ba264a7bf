"""One trainer run, from a TrainerConfig to a TrainerResult:

pick the device → check every location (s3:// buckets, credentials, endpoints; the outputs writable) and
fetch the data sets → the checked data (the preflight stage's, or the preflight here) → load tokenizer and
model → train (resuming from the newest complete checkpoint; with spec.evaluation.checkpoints, evaluating on a
subset as it goes, and the chosen step's weights put back after: kubetune_trainer.checkpoint_eval) → evaluate
(when spec.evaluation is set) →
export the artifact (uploaded when the output is s3://) → apply the gates and promote
(kubetune_trainer.promotion) → report the result.
Every ending is a TrainerResult with a Reason; nothing escapes as a raw traceback.
"""

from __future__ import annotations

import contextlib
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune.api.enums import Reason
from kubetune.api.method_defaults import tuning_method
from kubetune.api.spec import PreferenceAlignmentSpec
from kubetune.api.status import SourceRevision
from kubetune.api.trainer_contract import TrainerConfig, TrainerResult
from kubetune_trainer.failures import StopRequest, TrainerFailure, classify, training_callbacks
from kubetune_trainer.reporting import Log, Reporter, stderr_log

if TYPE_CHECKING:
    from kubetune_trainer.common import Context


def _resolve(uri: str, *, kind: str, reason: str, config: TrainerConfig, revision: str | None = None) -> Path:
    """A local path for `uri`; a location that does not exist fails with `reason`, storage that
    cannot be used (kubetune_trainer.storage.StorageError) with StorageUnavailable."""
    from kubetune_trainer.sources import SourceError, resolve
    from kubetune_trainer.storage import StorageError

    try:
        return resolve(uri, kind=kind, revision=revision, token_env=config.secret_env.hf_token)
    except StorageError as e:
        raise TrainerFailure(Reason.STORAGE_UNAVAILABLE, str(e)) from None
    except SourceError as e:
        raise TrainerFailure(reason, str(e)) from e


def _check_storage(config: TrainerConfig) -> None:
    """Before anything is read: every s3:// bucket exists and the credentials may read it, and the
    s3:// outputs (output, promotedUri) may be written — StorageUnavailable naming the URI if not."""
    from kubetune_trainer.storage import StorageError, check_bucket, check_writable, is_s3

    src = config.sources
    try:
        for what, uri in (("model", src.model), ("adapter", src.adapter), ("dataset", src.dataset), ("replay", src.replay),
                          ("golden", src.golden), ("safety", src.safety), ("forgetting", src.forgetting)):
            if is_s3(uri):
                check_bucket(str(uri), doing=f"{what}: cannot read")
        for what, uri in (("output", config.output_uri), ("promotedUri", src.promoted)):
            if is_s3(uri):
                check_writable(str(uri), doing=f"{what}: cannot write")
    except StorageError as e:
        raise TrainerFailure(Reason.STORAGE_UNAVAILABLE, str(e)) from None


def _spec_uri(config: TrainerConfig, name: str) -> str:
    """The URI the spec names for a source (what status and the model card show)."""
    spec, src = config.spec, config.sources
    ev = spec.evaluation
    replay = getattr(spec.dataset, "replay", None)  # FineTuneJob only
    by_name = {
        "dataset": spec.dataset.uri,
        "replay": replay.uri if replay is not None else None,
        "golden": ev.golden_dataset.uri if ev and ev.golden_dataset else None,
        "safety": ev.safety_dataset.uri if ev and ev.safety_dataset else None,
        "forgetting": ev.forgetting_dataset.uri if ev and ev.forgetting_dataset else None,
        "model": spec.base_model.uri if spec.base_model else None,
    }
    return by_name.get(name) or str(getattr(src, name))


def run(config: TrainerConfig, *, log: Log = stderr_log, reporter: Reporter | None = None,
        capture: dict[str, Any] | None = None) -> TrainerResult:
    """Run the job; ``capture`` (tests, benchmarks) receives the trained model and tokenizer."""
    started = time.monotonic()
    output = Path(config.sources.output)
    output.mkdir(parents=True, exist_ok=True)
    reporter = reporter or Reporter(config, log=log)
    stop = StopRequest()
    stop.install()
    state: dict[str, Any] = {}
    data_summary = None
    artifact: Path | None = None
    artifact_uri: str | None = None
    merged: Path | None = None
    metrics: dict[str, float] = {}
    details: dict[str, Any] = {}
    trainer: Any = None
    cleanup = contextlib.ExitStack()  # the model cache lease, renewed while the job runs
    from kubetune_trainer.tracking import Tracking

    tracking = Tracking(config, output, log)
    try:
        spec = config.spec
        method = str(tuning_method(spec))
        from kubetune_trainer import modeling

        # 0. the device: a GPU job on a pod without a GPU fails now (GPUUnavailable), not after the preflight
        device = modeling.pick_device(config.device, gpus=spec.resources.gpus)
        from kubetune_trainer import distributed

        rank = distributed.init(device.kind)  # torchrun: the process group, this rank's own device
        if rank.world_size != config.world_size:
            raise TrainerFailure(Reason.TRAINER_ERROR, (
                f"the job was planned for {config.world_size} process(es) (resources.gpus × nodes) but "
                f"{rank.world_size} were started: run it under torchrun with a process per GPU (kubetune run does)"))
        # 1. every location, then the checked data (the preflight stage's, or the preflight run here),
        #    before any model is loaded; the inputs' digests for provenance
        reporter.update(stage="preflight", force=True)
        from kubetune_trainer.data import prepare_data
        from kubetune_trainer.provenance import adapter_revision, input_file, model_revision

        _check_storage(config)
        files: dict[str, Path] = {}
        for name in ("dataset", "replay", "golden", "safety", "forgetting"):
            uri = getattr(config.sources, name)
            if uri:
                files[name] = _resolve(uri, kind="dataset", reason=Reason.DATA_INVALID, config=config)
        inputs = [input_file(name, _spec_uri(config, name), path) for name, path in files.items()]
        # every rank checks the same data the same way (seeded); ranks other than 0 keep their copy aside
        data_summary, train_path, validation_path = prepare_data(
            config, output=output if rank.main else output / "kubetune" / f"rank{rank.rank}", log=log)
        data_summary = data_summary.model_copy(update={"inputs": inputs})
        reporter.update(data=data_summary, force=True)
        if stop.requested:
            raise TrainerFailure(Reason.INTERRUPTED, f"stopped by {stop.signal_name} before training")

        # 2. tokenizer and model
        reporter.update(stage="loading", force=True)
        import torch

        from kubetune_trainer.checkpoints import (
            checkpoint_step,
            completion_callback,
            is_final,
            load_final,
            newest_complete,
            prepare_resume,
        )
        from kubetune_trainer.common import Context
        from kubetune_trainer.data import dpo_rows, read_jsonl, sft_rows, with_replay
        from kubetune_trainer.reporting import progress_callback

        torch.manual_seed(spec.training.seed)
        model_path, pinned = _model_path(config, log, cleanup)
        data_summary.base_model = pinned or model_revision(_spec_uri(config, "model"), model_path)
        tokenizer = modeling.load_tokenizer(model_path, config.sources.model_revision)
        gc = bool(spec.training.gradient_checkpointing)

        def load_base() -> Any:
            return modeling.load_base(model_path, method=method, quant=spec.quantization, device=device,
                                      revision=config.sources.model_revision, gradient_checkpointing=gc)

        model = load_base()
        adapter_path = None
        if config.task == "dpo" and config.sources.adapter:
            adapter_path = _resolve(config.sources.adapter, kind="adapter", reason=Reason.MODEL_UNAVAILABLE, config=config)
            data_summary.adapter = adapter_revision(config.sources.adapter, adapter_path)
        reporter.update(data=data_summary, force=True)
        implicit = not isinstance(spec, PreferenceAlignmentSpec) or str(spec.dpo.reference_model) == "implicit"
        if method in ("lora", "qlora"):
            if adapter_path is not None:
                # TRL's DPOTrainer adds a frozen copy of this adapter named "ref" as the implicit reference
                model = modeling.load_adapter(model, adapter_path, trainable=True)
            elif spec.lora is None:  # resolve() sets it for lora and qlora
                raise TrainerFailure(Reason.TRAINER_ERROR, f"{method} needs spec.lora; the config's spec is not resolved")
            else:
                model = modeling.add_adapter(model, spec.lora)
        elif adapter_path is not None:
            raise TrainerFailure(Reason.TRAINER_ERROR, "an adapter source needs tuning lora or qlora, not full")
        ref_model = None
        if config.task == "dpo" and not implicit:
            ref_model = modeling.load_base(model_path, method=method, quant=spec.quantization, device=device,
                                           revision=config.sources.model_revision)
            if adapter_path is not None:
                # The reference is base + SFT adapter. Hand TRL the transformers model with the LoRA layers
                # inside, not the PeftModel wrapper: TRL patches the reference's forward with its fused LM
                # head, which needs the model's own backbone (through a PeftModel it gets the whole causal
                # LM and fails with "no attribute last_hidden_state").
                ref_model = modeling.load_adapter(ref_model, adapter_path, trainable=False).get_base_model()
            ref_model.eval().requires_grad_(False)  # frozen: no autograd graph, never in the optimizer
        from kubetune_trainer.bnb_guard import guard_bnb_cpu_repack

        guard_bnb_cpu_repack(model)
        if ref_model is not None:
            guard_bnb_cpu_repack(ref_model)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        log(f"model: {config.sources.model} method {method} on {device.kind}; trainable {trainable:,} of {total:,} parameters")

        tracking.start()  # spec.tracking: the run transformers' MLflow integration logs the curve to
        ctx = Context(config=config, spec=spec, method=method, device=device, output=output, log=log,
                      model=model, tokenizer=tokenizer, ref_model=ref_model, report_to=tracking.report_to())
        ctx.callbacks = [progress_callback(reporter), completion_callback(), *training_callbacks(stop, state)]
        records = read_jsonl(train_path)
        if config.task == "sft":
            from kubetune_trainer.sft import build_sft_trainer

            rows, assistant_only = sft_rows(with_replay(records, train_path, spec, log), str(spec.dataset.format),
                                            tokenizer)
            trainer = build_sft_trainer(ctx, rows, assistant_only=assistant_only)
        else:
            from kubetune_trainer.dpo import build_dpo_trainer

            trainer = build_dpo_trainer(ctx, dpo_rows(records, tokenizer))

        # 3. train, resuming from the newest complete checkpoint
        # rank 0 sets half-written checkpoints aside; every rank resumes from the newest complete one
        resume = prepare_resume(ctx.checkpoint_dir, log) if rank.main else newest_complete(ctx.checkpoint_dir)
        if resume is not None:
            log(f"resuming from {resume.name}")
            details["resumedFrom"] = resume.name
            reporter.update(resumed_from_step=checkpoint_step(resume), force=True)
        tracker = _checkpoint_tracker(ctx, trainer, validation_path, load_base, files,
                                      checkpoint_step(resume) if resume is not None else None)
        if stop.requested:
            raise TrainerFailure(Reason.INTERRUPTED, f"stopped by {stop.signal_name} before training")
        if resume is not None and is_final(resume, spec.training.max_steps):
            # Killed after the last checkpoint (during evaluation or export): the training is done.
            log(f"{resume.name} is the last step of training; loading it and going on to evaluation")
            load_final(trainer, resume)
            out = None
        else:
            out = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        step = trainer.state.global_step
        if rank.distributed and rank.main:
            from kubetune_trainer.common import parallelism

            log(f"trained as {type(trainer.model_wrapped).__name__} on {rank.world_size} ranks: each held "
                f"{parallelism(ctx).holds}")
        if state.get("diverged"):
            d = state["diverged"]
            raise TrainerFailure(Reason.DIVERGED, (
                f"training loss became {d['loss']} at step {d['step']}; stopped early without saving. Lower "
                f"training.learningRate (now {spec.training.learning_rate:g}), raise warmupRatio, or check the data"))
        if state.get("interrupted"):
            raise TrainerFailure(Reason.INTERRUPTED, (
                f"stopped by {state['interrupted']} at step {step}/{trainer.state.max_steps}; checkpoint-{step} "
                "was saved and a restart resumes from it"))
        metrics.update(_train_metrics(trainer, out))
        details["trainLog"] = [h for h in trainer.state.log_history if "loss" in h][-50:]
        selection = tracker.finish(ctx.model, step) if tracker is not None else None

        # 4. evaluation
        eval_failure: TrainerFailure | None = None
        if spec.evaluation is not None:
            reporter.update(stage="evaluating", force=True)
            try:
                metrics.update(_evaluate(ctx, validation_path, load_base, details, files))
            except Exception as e:
                log("evaluation failed:\n" + traceback.format_exc())
                eval_failure = classify(e, config.plan)
                eval_failure.message = "evaluation failed: " + eval_failure.message

        # 5. artifacts
        reporter.update(stage="exporting", force=True)
        from kubetune.gates import decide, promotion_decision
        from kubetune_trainer.artifacts import export, export_merged, model_card, upload

        gates = spec.evaluation.gates if spec.evaluation else None
        # the artifact holds what the model is, not how long this run took: the same weights export to the
        # same bytes, so a retry re-promoting them finds its manifest in place (the result keeps the timings)
        model_metrics = {k: v for k, v in metrics.items() if k not in TIMING_METRICS}
        card = model_card(config=config, spec=spec, method=method, data=data_summary, metrics=model_metrics,
                          adapter_from=config.sources.adapter, decision=decide(metrics, gates), checkpoints=selection)
        unwrapped = trainer.accelerator.unwrap_model(trainer.model)
        # FSDP: the shards gathered into rank 0's memory (every rank takes part), saved as one model
        gathered = distributed.full_state_dict(trainer.model) if getattr(trainer, "is_fsdp_enabled", False) else None
        trainer.accelerator.wait_for_everyone()
        if not trainer.accelerator.is_main_process:  # torchrun: rank 0 writes the artifact
            raise _WorkerDone(TrainerResult(outcome="succeeded", reason=Reason.SUCCEEDED,
                                            message="worker rank finished", metrics=metrics))
        artifact = export(model=unwrapped, tokenizer=tokenizer, output=output, method=method, card=card,
                          state_dict=gathered,
                          extra={"job": config.job.model_dump(mode="json"), "method": method, "metrics": model_metrics,
                                 "baseModel": config.sources.model})
        log(f"artifact: {artifact}")
        if capture is not None:
            capture.update(model=unwrapped, tokenizer=tokenizer, trainer=trainer)
        if config.merge_adapter:
            merged = export_merged(model=unwrapped, tokenizer=tokenizer, output=output, method=method, card=card, log=log)
        upload(config, [artifact, merged], log=log)  # an s3:// output: the folders, each manifest last
        artifact_uri = config.uri_of(artifact)  # only now is it where the URI says
        if eval_failure is not None:
            raise eval_failure
        result = TrainerResult(outcome="succeeded", reason=Reason.SUCCEEDED, message=_success_message(metrics, method),
                               metrics=metrics, data=data_summary, artifact=str(artifact),
                               artifact_uri=artifact_uri,
                               merged=str(merged) if merged else None, details=details, checkpoints=selection)

        # 6. the gates on the result as reported, and promotion when they pass
        decision = promotion_decision(result, gates)
        if decision.passed and config.sources.promoted:
            from kubetune_trainer.promotion import promote

            result.promotion = promote(artifact, config.sources.promoted,
                                       uri=config.promoted_uri or config.sources.promoted, log=log)
        elif config.sources.promoted:
            log(f"not promoted: {decision.message}")
        result.details["seconds"] = round(time.monotonic() - started, 2)
        tracking.log_outcome(metrics=metrics, gates=[g.model_dump(by_alias=True, exclude_none=True, mode="json")
                                                     for g in decision.gate_results()], card=card, outcome="succeeded")
        reporter.update(stage="done", force=True)
    except _WorkerDone as done:
        result = done.result
    except BaseException as e:  # every ending becomes a result
        step = reporter.progress.step
        failure = classify(e, config.plan, step)
        if not isinstance(e, TrainerFailure):
            log("trainer error:\n" + traceback.format_exc())
        details.update(failure.details)
        details["seconds"] = round(time.monotonic() - started, 2)
        result = TrainerResult(outcome="failed", reason=failure.reason, message=failure.message, metrics=metrics,
                               data=data_summary, artifact=str(artifact) if artifact else None,
                               artifact_uri=artifact_uri, details=details)
        reporter.update(stage="failed", force=True)
    cleanup.close()
    tracking.close(failed=result.outcome != "succeeded")
    result.tracking = tracking.report()
    reporter.finish(result)
    reporter.close()
    stop.uninstall()
    return result


def _model_path(config: TrainerConfig, log: Log, cleanup: contextlib.ExitStack) -> tuple[Path, SourceRevision | None]:
    """The base model's folder, and its pinned revision when it came from the model cache. With a cache
    (config.model_cache) and an hf:// or s3:// model, the data preflight pod fetched it and leased the
    entry for this job: the trainer reads it from the cache volume and renews the lease while it runs.
    An entry gone meanwhile (evicted after a stale lease) is fetched again through the cache."""
    from kubetune.api.model_cache import cacheable

    uri = config.sources.model
    if config.model_cache is None or not cacheable(uri):
        path = _resolve(uri, kind="model", reason=Reason.MODEL_UNAVAILABLE, config=config,
                        revision=config.sources.model_revision)
        return path, None
    from kubetune_trainer.model_cache import ModelCache
    from kubetune_trainer.preflight import job_id

    cache, job = ModelCache(config.model_cache), job_id(config)
    key = cache.lease_key(job)
    cache.renew(job)  # before looking: an eviction that has not yet re-read the leases now sees this one
    if key is not None and cache.complete(key):
        path, revision = cache.entry(key), cache.revision(key)
        log(f"model: {uri} (revision {revision}) from the model cache, fetched by the data preflight pod; "
            "nothing downloaded here")
    else:
        log(f"model {uri}: this job holds no lease on a complete cache entry (a restarted pod released it, or "
            "the entry was evicted after its lease went stale); looking it up in the model cache")
        path, report = cache.ensure(uri, revision=config.sources.model_revision, job_uid=job,
                                    token_env=config.secret_env.hf_token, log=log)
        revision = report.revision
    cleanup.enter_context(cache.heartbeat(job))
    pinned = SourceRevision(uri=_spec_uri(config, "model"), revision=revision) if uri.startswith("hf://") and revision else None
    return path, pinned


class _WorkerDone(Exception):
    def __init__(self, result: TrainerResult) -> None:
        super().__init__("worker done")
        self.result = result


TIMING_METRICS = frozenset({"train.seconds", "train.tokens_per_second"})


def _train_metrics(trainer: Any, out: Any) -> dict[str, float]:
    import math

    m: dict[str, float] = {"train.steps": float(trainer.state.global_step)}
    logged = [h for h in trainer.state.log_history if "loss" in h]
    if logged:
        m["train.loss"] = float(logged[-1]["loss"])
        for key in ("rewards/accuracies", "rewards/margins", "mean_token_accuracy"):
            if key in logged[-1]:
                m["train." + key.replace("/", "_")] = float(logged[-1][key])
    om = getattr(out, "metrics", {}) or {}
    if "train_runtime" in om:
        m["train.seconds"] = float(om["train_runtime"])
    if "train_loss" in om:
        m["train.loss_mean"] = float(om["train_loss"])
    tokens = getattr(trainer.state, "num_input_tokens_seen", 0)
    if tokens and om.get("train_runtime"):
        m["train.tokens_per_second"] = float(tokens) / float(om["train_runtime"])
    return {k: v for k, v in m.items() if math.isfinite(v)}


def _checkpoint_tracker(ctx: Context, trainer: Any, validation_path: Path | None, load_base: Callable[[], Any],
                        files: dict[str, Path], resume_step: int | None) -> Any:
    """With spec.evaluation.checkpoints: a CheckpointTracker, its callback added to the trainer."""
    ev = ctx.spec.evaluation
    if ev is None or ev.checkpoints is None:
        return None
    from kubetune_trainer.checkpoint_eval import CheckpointTracker, tracker_callback

    settings = ev.checkpoints
    base_cache: dict[str, Any] = {}

    def evaluate(model: Any) -> dict[str, float]:
        use_cache, training = model.config.use_cache, model.training
        try:
            return _evaluate(ctx, validation_path, load_base, {}, files, limit=settings.examples,
                             base_cache=base_cache)
        finally:
            model.config.use_cache = use_cache
            model.train(training)

    tracker = CheckpointTracker(settings, ev.gates, ctx.output / "kubetune", evaluate, ctx.log,
                                resume_step=resume_step)
    trainer.add_callback(tracker_callback(tracker))
    return tracker


def _evaluate(ctx: Context, validation_path: Path | None, load_base: Callable[[], Any],
              details: dict[str, Any], files: dict[str, Path], *, limit: int | None = None,
              base_cache: dict[str, Any] | None = None) -> dict[str, float]:
    from kubetune_trainer.base_access import base_access_for, dpo_reference
    from kubetune_trainer.evaluate import evaluate_model

    # evaluation reads local files: the sets fetched before training (hf://, s3://, pvc:// resolved)
    config = ctx.config.model_copy(deep=True)
    for name in ("golden", "safety", "forgetting"):
        if name in files:
            setattr(config.sources, name, str(files[name]))
    model = ctx.model
    base = base_access_for(model, load_base, quantized=ctx.method == "qlora")
    model.eval()
    model.config.use_cache = True  # off for training; generation wants the KV cache
    report = evaluate_model(model, ctx.tokenizer, config=config,
                            validation_path=str(validation_path) if validation_path else None, base=base, log=ctx.log,
                            limit=limit, base_cache=base_cache,
                            reference=dpo_reference(model, ctx.ref_model) if ctx.config.task == "dpo" else None)
    details["evaluation"] = report.details
    details["evaluationSeconds"] = round(float(report.seconds), 2)
    return {k: float(v) for k, v in report.metrics.items()}


def _success_message(metrics: dict[str, float], method: str) -> str:
    parts = [f"{method} training finished"]
    if "train.steps" in metrics:
        parts.append(f"{int(metrics['train.steps'])} steps")
    if "train.loss" in metrics:
        parts.append(f"final loss {metrics['train.loss']:.4f}")
    return ", ".join(parts)


__all__ = ["run"]
