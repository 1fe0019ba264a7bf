"""One trainer run, from a TrainerConfig to a TrainerResult:

pick the device → the checked data (the preflight stage's, or the preflight here) → load tokenizer and
model → train (resuming from the newest complete checkpoint) → evaluate (when spec.evaluation is set) →
export the artifact → report the result.
Every ending is a TrainerResult with a Reason; nothing escapes as a raw traceback.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune.api.defaults import tuning_method
from kubetune.api.enums import Reason
from kubetune.api.spec import PreferenceAlignmentSpec
from kubetune.api.trainer_contract import TrainerConfig, TrainerResult
from kubetune_trainer.failures import StopRequest, TrainerFailure, classify, training_callbacks
from kubetune_trainer.reporting import Log, Reporter, stderr_log

if TYPE_CHECKING:
    from kubetune_trainer.common import Context


def _resolve(uri: str, *, kind: str, reason: str, config: TrainerConfig, revision: str | None = None) -> Path:
    from kubetune_trainer.sources import SourceError, resolve

    try:
        return resolve(uri, kind=kind, revision=revision, token_env=config.secret_env.hf_token)
    except SourceError as e:
        raise TrainerFailure(reason, str(e)) from e


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
    merged: Path | None = None
    metrics: dict[str, float] = {}
    details: dict[str, Any] = {}
    trainer: Any = None
    try:
        spec = config.spec
        method = str(tuning_method(spec))
        from kubetune_trainer import modeling

        # 0. the device: a GPU job on a pod without a GPU fails now (GPUUnavailable), not after the preflight
        device = modeling.pick_device(config.device, gpus=spec.resources.gpus)
        # 1. the checked data (the preflight stage's, or the preflight run here), before any model is loaded
        reporter.update(stage="preflight", force=True)
        from kubetune_trainer.data import prepare_data

        data_summary, train_path, validation_path = prepare_data(config, output=output, log=log)
        reporter.update(data=data_summary, force=True)
        if stop.requested:
            raise TrainerFailure(Reason.INTERRUPTED, f"stopped by {stop.signal_name} before training")

        # 2. tokenizer and model
        reporter.update(stage="loading", force=True)
        import torch

        from kubetune_trainer.checkpoints import completion_callback, is_final, load_final, prepare_resume
        from kubetune_trainer.common import Context
        from kubetune_trainer.data import dpo_rows, read_jsonl, sft_rows
        from kubetune_trainer.reporting import progress_callback

        torch.manual_seed(spec.training.seed)
        model_path = _resolve(config.sources.model, kind="model", reason=Reason.MODEL_UNAVAILABLE, config=config,
                              revision=config.sources.model_revision)
        tokenizer = modeling.load_tokenizer(model_path, config.sources.model_revision)
        gc = bool(spec.training.gradient_checkpointing)

        def load_base() -> Any:
            return modeling.load_base(model_path, method=method, quant=spec.quantization, device=device,
                                      revision=config.sources.model_revision, gradient_checkpointing=gc)

        model = load_base()
        adapter_path = None
        if config.task == "dpo" and config.sources.adapter:
            adapter_path = _resolve(config.sources.adapter, kind="adapter", reason=Reason.MODEL_UNAVAILABLE, config=config)
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

        ctx = Context(config=config, spec=spec, method=method, device=device, output=output, log=log,
                      model=model, tokenizer=tokenizer, ref_model=ref_model)
        ctx.callbacks = [progress_callback(reporter), completion_callback(), *training_callbacks(stop, state)]
        records = read_jsonl(train_path)
        if config.task == "sft":
            from kubetune_trainer.sft import build_sft_trainer

            rows, assistant_only = sft_rows(records, str(spec.dataset.format), tokenizer)
            trainer = build_sft_trainer(ctx, rows, assistant_only=assistant_only)
        else:
            from kubetune_trainer.dpo import build_dpo_trainer

            trainer = build_dpo_trainer(ctx, dpo_rows(records, tokenizer))

        # 3. train, resuming from the newest complete checkpoint
        resume = prepare_resume(ctx.checkpoint_dir, log)
        if resume is not None:
            log(f"resuming from {resume.name}")
            details["resumedFrom"] = resume.name
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

        # 4. evaluation
        eval_failure: TrainerFailure | None = None
        if spec.evaluation is not None:
            reporter.update(stage="evaluating", force=True)
            try:
                metrics.update(_evaluate(ctx, validation_path, load_base, details))
            except Exception as e:
                log("evaluation failed:\n" + traceback.format_exc())
                eval_failure = classify(e, config.plan)
                eval_failure.message = "evaluation failed: " + eval_failure.message

        # 5. artifacts
        reporter.update(stage="exporting", force=True)
        from kubetune_trainer.artifacts import export, export_merged, model_card

        card = model_card(config=config, spec=spec, method=method, data=data_summary, metrics=metrics,
                          adapter_from=config.sources.adapter)
        unwrapped = trainer.accelerator.unwrap_model(trainer.model)
        trainer.accelerator.wait_for_everyone()
        if not trainer.accelerator.is_main_process:  # torchrun: rank 0 writes the artifact
            raise _WorkerDone(TrainerResult(outcome="succeeded", reason=Reason.SUCCEEDED,
                                            message="worker rank finished", metrics=metrics))
        artifact = export(model=unwrapped, tokenizer=tokenizer, output=output, method=method, card=card,
                          extra={"job": config.job.model_dump(mode="json"), "method": method, "metrics": metrics,
                                 "baseModel": config.sources.model})
        log(f"artifact: {artifact}")
        if capture is not None:
            capture.update(model=unwrapped, tokenizer=tokenizer, trainer=trainer)
        if config.merge_adapter:
            merged = export_merged(model=unwrapped, tokenizer=tokenizer, output=output, method=method, card=card, log=log)
        if eval_failure is not None:
            raise eval_failure
        details["seconds"] = round(time.monotonic() - started, 2)
        result = TrainerResult(outcome="succeeded", reason=Reason.SUCCEEDED, message=_success_message(metrics, method),
                               metrics=metrics, data=data_summary, artifact=str(artifact),
                               artifact_uri=config.uri_of(artifact),
                               merged=str(merged) if merged else None, details=details)
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
                               artifact_uri=config.uri_of(artifact) if artifact else None, details=details)
        reporter.update(stage="failed", force=True)
    reporter.finish(result)
    reporter.close()
    stop.uninstall()
    return result


class _WorkerDone(Exception):
    def __init__(self, result: TrainerResult) -> None:
        super().__init__("worker done")
        self.result = result


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


def _evaluate(ctx: Context, validation_path: Path | None, load_base: Callable[[], Any],
              details: dict[str, Any]) -> dict[str, float]:
    try:
        from kubetune_trainer.evaluate import evaluate_model  # issue #6
    except ImportError:
        ctx.log("evaluation: kubetune_trainer.evaluate is not available in this build; skipping")
        return {}
    from kubetune_trainer.base_access import base_access_for
    from kubetune_trainer.sources import resolve

    # evaluation reads local files: resolve hf:// / s3:// / pvc:// sets first
    config = ctx.config.model_copy(deep=True)
    for name in ("golden", "safety", "forgetting"):
        uri = getattr(config.sources, name)
        if uri:
            setattr(config.sources, name, str(resolve(uri, kind="dataset", token_env=config.secret_env.hf_token)))
    model = ctx.model
    base = base_access_for(model, load_base, quantized=ctx.method == "qlora")
    model.eval()
    model.config.use_cache = True  # off for training; generation wants the KV cache
    report = evaluate_model(model, ctx.tokenizer, config=config,
                            validation_path=str(validation_path) if validation_path else None, base=base, log=ctx.log)
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
