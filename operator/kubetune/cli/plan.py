"""Text and JSON rendering of a plan, for `kubetune plan` (wired in `kubetune.cli`).

Exit codes (the CLI contract): 0 fits, 2 does not fit, 1 bad input (including "cannot plan").
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TextIO

from kubetune.planning.planner import plan
from kubetune.planning.quantity import format_bytes
from kubetune.planning.types import CannotPlan, Plan, PlanRequest

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_DOES_NOT_FIT",
    "EXIT_FITS",
    "exit_code",
    "plan_main_from_request",
    "render_plan_json",
    "render_plan_text",
]

EXIT_FITS = 0
EXIT_DOES_NOT_FIT = 2
EXIT_BAD_INPUT = 1

_LABELS = {
    "weights": "base weights",
    "trainable_params": "trainable parameters",
    "gradients": "gradients",
    "optimizer_states": "optimizer states",
    "optimizer_step_temporaries": "optimizer step temporaries",
    "activations": "activations",
    "logits": "logits + loss",
    "autocast_weight_copies": "autocast weight copies",
    "dequantization_buffer": "dequantization buffer",
    "fsdp_unsharded_params": "FSDP gathered params/grads",
    "ddp_gradient_buckets": "DDP gradient buckets",
    "reference_model": "reference model",
    "runtime_overhead": "CUDA context + allocator",
}
_CPU_LABELS = {"runtime_overhead": "trainer process + allocator"}


def exit_code(p: Plan) -> int:
    return EXIT_FITS if p.fits else EXIT_DOES_NOT_FIT


def render_plan_text(p: Plan) -> str:
    """A readable table: the breakdown, the total against the GPU (a CPU job: the pod's memory limit),
    the verdict and the suggestions."""
    on = "CPU (one process)" if p.cpu_only else f"{p.world_size} GPU{'s' if p.world_size > 1 else ''}"
    lines = [
        f"model        {p.architecture}  ({p.params_total / 1e9:.2f}B params, "
        f"{p.params_trainable / 1e6:,.1f}M trainable)",
        f"job          {p.kind} / {p.method} on {on}",
        "",
        f"{('per pod (CPU job)' if p.cpu_only else 'per GPU') + ', at the ' + p.peak_phase:<36}{'bytes':>18}{'':>3}{'':<10}",
    ]
    width = 36
    for name, value in p.breakdown.items():
        if value == 0 and name not in ("weights", "activations"):
            continue
        label = _CPU_LABELS.get(name) if p.cpu_only else None
        label = label or _LABELS.get(name, name.replace("_", " "))
        lines.append(f"  {label:<{width - 2}}{value:>18,}   {format_bytes(value):>10}")
    lines.append(f"  {'-' * (width - 2)}{'-' * 18}   {'-' * 10}")
    lines.append(f"  {'peak':<{width - 2}}{p.peak_bytes:>18,}   {format_bytes(p.peak_bytes):>10}")
    limit = "memory per pod (CPU job)" if p.cpu_only else "GPU memory"
    lines.append(f"  {limit:<{width - 2}}{p.limit_bytes:>18,}   {format_bytes(p.limit_bytes):>10}")
    lines.append(f"  {'headroom':<{width - 2}}{p.headroom_bytes:>18,}   {format_bytes(p.headroom_bytes):>10}")
    lines.append("")
    lines.append(("FITS: " if p.fits else "DOES NOT FIT: ") + p.summary())
    if p.suggestions:
        lines.append("")
        lines.append("suggestions (best first):")
        for s in p.suggestions:
            change = ", ".join(f"{k}={v}" for k, v in s.change.items())
            verdict = "fits" if s.fits else "does not fit"
            lines.append(f"  - {s.description}: ~{format_bytes(s.peak_bytes)} ({verdict})  [{change}]")
    if p.notes:
        lines.append("")
        lines.append("assumptions:")
        lines.extend(f"  - {n}" for n in p.notes)
    return "\n".join(lines) + "\n"


def render_plan_json(p: Plan) -> str:
    return json.dumps(p.to_dict(), indent=2) + "\n"


def plan_main_from_request(
    request: PlanRequest,
    *,
    output: str = "text",
    stream: TextIO,
    err: TextIO | None = None,
    pvc_mounts: Mapping[str, str] | None = None,
) -> int:
    """Plan `request`, write it to `stream` as text or json, and return the CLI exit code.

    "Cannot plan" (unknown architecture) is bad input: exit 1, the message on `err` (or, for json,
    `{"error": ..., "field": ...}` on `stream`).
    """
    if output not in ("text", "json"):
        raise ValueError(f"output must be text or json, not {output!r}")
    try:
        result = plan(request, pvc_mounts=pvc_mounts)
    except CannotPlan as exc:
        if output == "json":
            stream.write(json.dumps({"error": str(exc), "field": exc.field}, indent=2) + "\n")
        else:
            (err or stream).write(f"cannot plan: {exc}\n")
        return EXIT_BAD_INPUT
    stream.write(render_plan_json(result) if output == "json" else render_plan_text(result))
    return exit_code(result)
