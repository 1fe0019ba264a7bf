"""Defaults that depend on other fields (the method), in one place.

The schema carries the constant defaults; these are filled in by `resolve()` — used by the
planner and the renderer (so by the webhook's memory plan, the operator and `kubetune run`), so all
see the same values; the trainer reads them from the rendered config.

| field                                | qlora            | lora        | full        | DPO (any)   |
|--------------------------------------|------------------|-------------|-------------|-------------|
| training.learningRate                | 2e-4             | 2e-4        | 1e-5        | 5e-6        |
| training.batchSize                   | 4                | 4           | 1           | 2           |
| training.gradientAccumulationSteps   | 4                | 4           | 16          | 8           |
| training.optimizer                   | paged_adamw_8bit | adamw_torch | adamw_torch | as method   |
| training.epochs (if no maxSteps)     | 3                | 3           | 3           | 1           |
| quantization                         | 4-bit nf4, double quant, bfloat16 compute | - | - | -  |
| lora                                 | r 16, alpha 32, dropout 0.05, all-linear | same | - | - |
"""

from typing import TypeVar

from kubetune.api.enums import Method, Optimizer
from kubetune.api.spec import FineTuneJobSpec, LoraConfig, PreferenceAlignmentSpec, Quantization

SpecT = TypeVar("SpecT", FineTuneJobSpec, PreferenceAlignmentSpec)

SFT_LEARNING_RATE = {Method.QLORA: 2e-4, Method.LORA: 2e-4, Method.FULL: 1e-5}
SFT_BATCH_SIZE = {Method.QLORA: 4, Method.LORA: 4, Method.FULL: 1}
SFT_GRAD_ACCUM = {Method.QLORA: 4, Method.LORA: 4, Method.FULL: 16}
OPTIMIZER = {Method.QLORA: Optimizer.PAGED_ADAMW_8BIT, Method.LORA: Optimizer.ADAMW_TORCH, Method.FULL: Optimizer.ADAMW_TORCH}
DPO_LEARNING_RATE = 5e-6
DPO_BATCH_SIZE = 2
DPO_GRAD_ACCUM = 8
SFT_EPOCHS = 3.0
DPO_EPOCHS = 1.0


def tuning_method(spec: FineTuneJobSpec | PreferenceAlignmentSpec, referenced: FineTuneJobSpec | None = None) -> Method:
    """Which weights are trained: FineTuneJob.spec.method, or for a PreferenceAlignment its
    `tuning`, else the referenced job's method, else lora."""
    if isinstance(spec, FineTuneJobSpec):
        return Method(spec.method)
    if spec.tuning:
        return Method(spec.tuning)
    if referenced is not None:
        return Method(referenced.method)
    return Method.QLORA if spec.quantization else Method.LORA


def resolve(spec: SpecT, referenced: FineTuneJobSpec | None = None) -> SpecT:
    """A copy of the spec with every method-dependent default filled in.

    For a PreferenceAlignment chained by fineTuneJobRef, `referenced` is that job's spec: its
    base model, quantization and LoRA shape are inherited (a QLoRA adapter belongs to the
    quantized base it was trained on).
    """
    spec = spec.model_copy(deep=True)
    dpo = isinstance(spec, PreferenceAlignmentSpec)
    if isinstance(spec, PreferenceAlignmentSpec) and referenced is not None:
        inherited = referenced.model_copy(deep=True)  # the result shares no object with `referenced`
        spec.base_model = spec.base_model or inherited.base_model
        spec.quantization = spec.quantization or inherited.quantization
        spec.lora = spec.lora or inherited.lora
        spec.storage = spec.storage or inherited.storage
    method = tuning_method(spec, referenced)
    if isinstance(spec, PreferenceAlignmentSpec):
        spec.tuning = method
    if method == Method.QLORA and spec.quantization is None:
        spec.quantization = Quantization()
    if method in (Method.LORA, Method.QLORA) and spec.lora is None:
        spec.lora = LoraConfig()
    t = spec.training
    if t.learning_rate is None:
        t.learning_rate = DPO_LEARNING_RATE if dpo else SFT_LEARNING_RATE[method]
    if t.batch_size is None:
        t.batch_size = DPO_BATCH_SIZE if dpo else SFT_BATCH_SIZE[method]
    if t.gradient_accumulation_steps is None:
        t.gradient_accumulation_steps = DPO_GRAD_ACCUM if dpo else SFT_GRAD_ACCUM[method]
    if t.optimizer is None:
        t.optimizer = OPTIMIZER[method]
    if t.epochs is None:
        t.epochs = DPO_EPOCHS if dpo else SFT_EPOCHS
    return spec
