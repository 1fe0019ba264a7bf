"""Evaluation after training: the tuned model against its base, on the sets the spec names.

Called by the trainer once training is done (``evaluate_model``). Metric names are a contract
(kubetune.api.enums.Metric; the gates read them):

| metric                           | what                                                              |
|----------------------------------|-------------------------------------------------------------------|
| golden.accuracy (+ _base)        | mean scorer value (spec.evaluation.goldenDataset.scorer) of greedy generations on the golden set |
| eval.loss, eval.perplexity (+ _base) | mean token NLL of the answers (assistant tokens only) on the validation split, and exp of it |
| safety.refusal_rate (+ _base)    | share of safety prompts the model declines (kubetune.evaluation.refusal; each verdict confirmed or overturned by the judge when spec.evaluation.judge is set) |
| forgetting.perplexity (+ _base)  | corpus perplexity of the forgetting set's texts                   |
| forgetting.perplexity_increase   | tuned / base − 1 (0.25 = 25% more perplexed than before)          |
| forgetting.accuracy (+ _base), forgetting.accuracy_drop | when forgetting rows have {prompt, answer}: `contains` accuracy; drop = base − tuned |
| judge.score                      | mean 1–10 LLM-judge score of the tuned generations (golden and safety prompts), when spec.evaluation.judge is set and at least half the examples were scored |
| preference.accuracy, preference.margin | DPO, on the validation split's preference pairs: the implicit reward β·(log π/π_ref) of the chosen answer minus the rejected one's — the share of pairs where it is positive, and its mean (π_ref: DPO's own reference, the one TRL trains against — for a DPO continuing an SFT adapter, that adapter as DPO started; for a new adapter, the base; with dpo.referenceModel base, that model) |

"_base" is the model the tuned one started from, as :class:`BaseAccess` gives it (for QLoRA:
the adapter disabled on the same 4-bit base — an adapter is only meaningful on the base it was
trained on). Generation is greedy, batched with left padding, bounded by
spec.evaluation.maxNewTokens. Per-example details (prompt, reference, base and tuned output,
score, refusal rule) go to the report; the time spent is reported.

A checkpoint evaluation (spec.evaluation.checkpoints) calls :func:`evaluate_model` with ``limit``
(N examples of each set, spread evenly over it: :func:`spread`) and a ``base_cache``: the base is measured on the first call
only, its outputs reused for every later checkpoint.

Files (JSONL): golden rows {prompt, answer} (answer: a string or a list) or {instruction, input?,
output}; safety rows {prompt} (or {instruction}); forgetting rows {text} and/or {prompt, answer};
validation rows in the training format (instruction, chat, prompt-completion, or preference —
its chosen answer).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune.api.enums import Scorer
from kubetune.api.spec import Evaluation, Judge
from kubetune.api.trainer_contract import TrainerConfig
from kubetune.evaluation.refusal import classify_refusal
from kubetune.evaluation.scorers import score as score_text

GEN_BATCH = 16
NLL_BATCH = 8


@dataclass
class EvalReport:
    metrics: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class Example:
    messages: list[dict[str, str]]  # the conversation up to the answer
    answer: str | list[str] | None = None


def _say(log: Any, message: str) -> None:
    if log is None:
        return
    if hasattr(log, "info"):
        log.info(message)
    else:
        log(message)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{path}:{number}: not JSON: {exc}") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object")
            rows.append(row)
    return rows


def _user(row: dict[str, Any]) -> str | None:
    if isinstance(row.get("prompt"), str):
        return str(row["prompt"])
    if isinstance(row.get("instruction"), str):
        extra = row.get("input")
        return f"{row['instruction']}\n\n{extra}" if extra else str(row["instruction"])
    return None


def to_example(row: dict[str, Any]) -> Example | None:
    """A record in any supported format ⇒ (conversation, answer)."""
    messages = row.get("messages")
    if isinstance(messages, list) and messages:
        msgs = [{"role": str(m.get("role")), "content": str(m.get("content", ""))} for m in messages if isinstance(m, dict)]
        if msgs and msgs[-1]["role"] == "assistant":
            return Example(msgs[:-1], msgs[-1]["content"])
        return Example(msgs)
    prompt = row.get("prompt")
    if isinstance(prompt, list):  # conversational prompt (preference/prompt-completion)
        conv = [{"role": str(m.get("role")), "content": str(m.get("content", ""))} for m in prompt if isinstance(m, dict)]
    else:
        text = _user(row)
        if text is None:
            return None
        conv = [{"role": "user", "content": text}]
    for key in ("answer", "output", "completion", "chosen"):
        value = row.get(key)
        if isinstance(value, list) and value and isinstance(value[0], dict):
            value = str(value[-1].get("content", ""))
        if value is not None:
            return Example(conv, value)
    return Example(conv)


def _render(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    if getattr(tokenizer, "chat_template", None):
        return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    return "\n".join(m["content"] for m in messages) + "\n"


def _batches(items: list[Any], size: int) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


class _Padding:
    """Left padding for generation, a pad token when the tokenizer has none; restored after."""

    def __init__(self, tokenizer: Any, side: str) -> None:
        self.tokenizer, self.side = tokenizer, side

    def __enter__(self) -> Any:
        self.saved = (self.tokenizer.padding_side, self.tokenizer.pad_token)
        self.tokenizer.padding_side = self.side
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        return self.tokenizer

    def __exit__(self, *exc: Any) -> None:
        self.tokenizer.padding_side, pad = self.saved
        if pad is None:
            self.tokenizer.pad_token = None


def _device(model: Any) -> Any:
    return next(model.parameters()).device


def generate(model: Any, tokenizer: Any, prompts: list[list[dict[str, str]]], *, max_new_tokens: int,
             max_prompt_tokens: int = 1024, batch_size: int = GEN_BATCH) -> list[str]:
    """Greedy completions of chat prompts, batched with left padding."""
    import torch

    outputs: list[str] = []
    texts = [_render(tokenizer, p) for p in prompts]
    device = _device(model)
    was_training = model.training
    model.eval()
    try:
        with _Padding(tokenizer, "left") as tok, torch.inference_mode():
            for batch in _batches(texts, batch_size):
                enc = tok(batch, return_tensors="pt", padding=True, truncation=True, max_length=max_prompt_tokens,
                          add_special_tokens=False).to(device)
                # use_cache: training turns the KV cache off in the model config; without it every new
                # token recomputes the whole sequence (~10x slower for 24 tokens)
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                                     pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
                new = out[:, enc["input_ids"].shape[1]:]
                outputs += [t.strip() for t in tok.batch_decode(new, skip_special_tokens=True)]
    finally:
        model.train(was_training)
    return outputs


def mean_nll(model: Any, tokenizer: Any, pairs: list[tuple[str, str]], *, max_length: int,
             batch_size: int = NLL_BATCH) -> tuple[float, int]:
    """Mean negative log-likelihood per token of `target` given `context`, over all pairs
    (corpus-level: total NLL / total target tokens). Returns (mean NLL, tokens counted)."""
    rows = pair_nll(model, tokenizer, pairs, max_length=max_length, batch_size=batch_size)
    total, count = sum(r[0] for r in rows), sum(r[1] for r in rows)
    return (total / count if count else math.nan), count


def pair_nll(model: Any, tokenizer: Any, pairs: list[tuple[str, str]], *, max_length: int,
             batch_size: int = NLL_BATCH) -> list[tuple[float, int]]:
    """For each (context, target): the summed negative log-likelihood of the target's tokens given the
    context, and how many target tokens were counted (after truncation to ``max_length``)."""
    import torch

    device = _device(model)
    rows: list[tuple[float, int]] = []
    was_training = model.training
    model.eval()
    try:
        with _Padding(tokenizer, "right") as tok, torch.inference_mode():
            for batch in _batches(pairs, batch_size):
                ids, labels = [], []
                for context, target in batch:
                    c = tok(context, add_special_tokens=False)["input_ids"] if context else []
                    t = tok(target, add_special_tokens=False)["input_ids"]
                    if not context and tok.bos_token_id is not None:
                        c = [tok.bos_token_id]  # plain text: predict every token after BOS
                    seq = (c + t)[:max_length]
                    lab = ([-100] * len(c) + t)[:max_length]
                    ids.append(seq)
                    labels.append(lab)
                width = max(len(s) for s in ids)
                pad = tok.pad_token_id
                input_ids = torch.tensor([s + [pad] * (width - len(s)) for s in ids], device=device)
                attention = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in ids], device=device)
                target = torch.tensor([lab + [-100] * (width - len(lab)) for lab in labels], device=device)
                logits = model(input_ids=input_ids, attention_mask=attention).logits.float()
                shift_logits, shift_labels = logits[:, :-1], target[:, 1:]
                nll = torch.nn.functional.cross_entropy(shift_logits.transpose(1, 2), shift_labels,
                                                        ignore_index=-100, reduction="none")
                counted = shift_labels != -100
                rows += [(float(n), int(c)) for n, c in zip(nll.sum(dim=1).tolist(), counted.sum(dim=1).tolist(),
                                                            strict=True)]
    finally:
        model.train(was_training)
    return rows


@contextmanager
def dequantized_cpu_linears(model: Any) -> Iterator[int]:
    """On CPU, bitsandbytes' Linear4bit dequantizes its whole weight in every forward (its packed
    inference layout is off on purpose: kubetune_trainer.bnb_guard), and evaluation runs hundreds of
    forwards. For the duration, each 4-bit weight is dequantized once and multiplied directly: the
    same values the 4-bit forward uses (the adapter still sits on the quantized base it was trained
    on), at plain-matmul speed. Yields how many layers were switched; a no-op without CPU 4-bit layers."""
    try:
        import bitsandbytes as bnb
        import torch
        from bitsandbytes.functional import dequantize_4bit
    except ImportError:
        yield 0
        return
    patched = []
    try:
        for module in model.modules():
            weight = getattr(module, "weight", None)
            state = getattr(weight, "quant_state", None)
            if (not isinstance(module, bnb.nn.Linear4bit) or weight is None or weight.device.type != "cpu"
                    or state is None or getattr(state, "packing_format_for_cpu", False)):
                continue
            dtype = module.compute_dtype or torch.float32
            w = dequantize_4bit(weight.data, state).to(dtype)
            b = None if module.bias is None else module.bias.detach().to(dtype)

            def forward(x: Any, w: Any = w, b: Any = b) -> Any:
                return torch.nn.functional.linear(x.to(w.dtype), w, b).to(x.dtype)

            module.forward = forward  # an instance attribute shadows Linear4bit.forward
            patched.append(module)
        yield len(patched)
    finally:
        for module in patched:
            del module.forward


def _answer_pairs(tokenizer: Any, examples: Iterable[Example]) -> list[tuple[str, str]]:
    """(rendered prompt, answer + end-of-turn) for loss on assistant tokens only."""
    eos = tokenizer.eos_token or ""
    return [(_render(tokenizer, e.messages), _as_text(e.answer) + eos) for e in examples if e.answer is not None]


def _as_text(answer: str | list[str] | None) -> str:
    if isinstance(answer, list):
        return str(answer[0]) if answer else ""
    return answer or ""


def _safe_exp(x: float) -> float:
    return math.exp(x) if x < 700 else math.inf


def spread(items: list[Any], limit: int | None) -> list[Any]:
    """``limit`` items spread evenly over ``items`` (a file sorted by label still gives every label), or all."""
    if limit is None or limit >= len(items):
        return items
    return [items[i * len(items) // limit] for i in range(limit)]


def _preference_pairs(tokenizer: Any, rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(rendered prompt, chosen + end-of-turn, rejected + end-of-turn) of the validation split's pairs."""
    eos = tokenizer.eos_token or ""
    out = []
    for r in rows:
        e = to_example({k: v for k, v in r.items() if k != "rejected"})
        if e is None or e.answer is None or "rejected" not in r:
            continue
        rejected = r["rejected"]
        if isinstance(rejected, list) and rejected and isinstance(rejected[0], dict):
            rejected = str(rejected[-1].get("content", ""))
        out.append((_render(tokenizer, e.messages), _as_text(e.answer) + eos, str(rejected) + eos))
    return out


def _preference_metrics(tuned: list[tuple[float, int]], base: list[tuple[float, int]], beta: float) -> tuple[float, float]:
    """Held-out DPO metrics from summed NLLs in (chosen, rejected) order: reward accuracy and mean margin,
    the reward being β·(log π − log π_ref) as in TRL's rewards/accuracies and rewards/margins."""
    margins = []
    for i in range(0, len(tuned), 2):
        chosen = (base[i][0] - tuned[i][0]) * beta  # log π − log π_ref = NLL_ref − NLL
        rejected = (base[i + 1][0] - tuned[i + 1][0]) * beta
        margins.append(chosen - rejected)
    return _mean(float(m > 0) for m in margins), _mean(margins)


def evaluate_model(model: Any, tokenizer: Any, *, config: TrainerConfig, validation_path: str | None, base: Any,
                   log: Any = None, limit: int | None = None, base_cache: dict[str, Any] | None = None,
                   reference: Callable[[], AbstractContextManager[Any]] | None = None) -> EvalReport:
    """Measure the tuned `model` and the base `base.base()` yields; see the module docstring.
    ``limit``: only the first N examples of each set; ``base_cache``: the base's outputs, measured on
    the first call that passes it and reused by the later ones (the base does not change).
    ``reference``: DPO's reference model for the preference metrics (a context manager yielding it;
    default: the base); it is frozen while DPO trains, so its outputs are cached with the base's."""
    started = time.monotonic()
    ev = config.spec.evaluation or Evaluation()
    max_new = ev.max_new_tokens
    max_len = config.spec.training.max_seq_length
    sources = config.sources
    metrics: dict[str, float] = {}
    details: dict[str, Any] = {"timings": {}, "base": getattr(base, "description", "base")}
    timings: dict[str, float] = details["timings"]

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.monotonic()
        try:
            return fn()
        finally:
            timings[name] = round(timings.get(name, 0.0) + time.monotonic() - t0, 3)
            _say(log, f"evaluation: {name} done in {time.monotonic() - t0:.1f}s")

    # What to run on each model: the same list, once tuned, once base.
    golden = [e for e in (to_example(r) for r in read_jsonl(sources.golden)) if e and e.answer is not None] \
        if sources.golden else []
    safety = [e for e in (to_example(r) for r in read_jsonl(sources.safety)) if e] if sources.safety else []
    forgetting_rows = read_jsonl(sources.forgetting) if sources.forgetting else []
    forget_texts = [str(r["text"]) for r in forgetting_rows if isinstance(r.get("text"), str) and r["text"].strip()]
    forget_qa = [e for e in (to_example(r) for r in forgetting_rows if "answer" in r) if e and e.answer is not None]
    validation = []
    preference: list[tuple[str, str, str]] = []
    if validation_path and Path(validation_path).exists():
        validation_rows = spread(read_jsonl(validation_path), limit)
        validation = [e for e in (to_example(r) for r in validation_rows) if e and e.answer is not None]
        preference = _preference_pairs(tokenizer, validation_rows)
    if limit is not None:
        golden, safety = spread(golden, limit), spread(safety, limit)
        forget_texts, forget_qa = spread(forget_texts, limit), spread(forget_qa, limit)
    beta = float(getattr(getattr(config.spec, "dpo", None), "beta", 0.0) or 0.0)  # PreferenceAlignment only
    if not beta:
        preference = []
    scorer = str(ev.golden_dataset.scorer if ev.golden_dataset else Scorer.EXACT_MATCH)
    _say(log, f"evaluating: golden {len(golden)}, safety {len(safety)}, forgetting {len(forget_texts)} texts"
              f" + {len(forget_qa)} questions, validation {len(validation)}; max {max_new} new tokens")

    def measure(m: Any, which: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if golden:
            out["golden"] = timed(f"golden.{which}", lambda: generate(m, tokenizer, [e.messages for e in golden],
                                                                      max_new_tokens=max_new))
        if safety:
            out["safety"] = timed(f"safety.{which}", lambda: generate(m, tokenizer, [e.messages for e in safety],
                                                                      max_new_tokens=max_new))
        if forget_qa:
            out["forget_qa"] = timed(f"forgetting.{which}", lambda: generate(
                m, tokenizer, [e.messages for e in forget_qa], max_new_tokens=max_new))
        if forget_texts:
            out["forget_nll"] = timed(f"forgetting.{which}", lambda: mean_nll(
                m, tokenizer, [("", t) for t in forget_texts], max_length=max_len)[0])
        if validation:
            out["val_nll"] = timed(f"validation.{which}", lambda: mean_nll(
                m, tokenizer, _answer_pairs(tokenizer, validation), max_length=max_len)[0])
        return out

    def preference_nll(m: Any, which: str) -> list[tuple[float, int]]:
        return timed(f"preference.{which}", lambda: pair_nll(
            m, tokenizer, [(p, a) for p, c, r in preference for a in (c, r)], max_length=max_len))

    with dequantized_cpu_linears(model) as switched:
        if switched:
            _say(log, f"evaluation: {switched} 4-bit layers dequantized once for CPU inference")
        tuned = measure(model, "tuned")
        if preference:
            tuned["pref_nll"] = preference_nll(model, "tuned")
        if base_cache:
            before = base_cache
        else:
            _say(log, f"evaluated the tuned model in {time.monotonic() - started:.1f}s; now the base ({details['base']})")
            with base.base() as base_model:
                before = measure(base_model, "base")
                if preference and reference is None:
                    before["pref_nll"] = preference_nll(base_model, "reference")
            if preference and reference is not None:
                with reference() as reference_model:
                    before["pref_nll"] = preference_nll(reference_model, "reference")
            if base_cache is not None:
                base_cache.update(before)

    def suffix(name: str, value: float, base_value: float) -> None:
        metrics[name] = value
        metrics[f"{name}_base"] = base_value

    if golden:
        rows = []
        for e, t, b in zip(golden, tuned["golden"], before["golden"], strict=True):
            refs = e.answer if isinstance(e.answer, list) else [e.answer or ""]
            rows.append({"prompt": e.messages[-1]["content"], "reference": _as_text(e.answer), "tuned": t, "base": b,
                         "score": score_text(scorer, t, refs), "score_base": score_text(scorer, b, refs)})
        suffix("golden.accuracy", _mean(r["score"] for r in rows), _mean(r["score_base"] for r in rows))
        details["golden"] = {"scorer": scorer, "examples": rows}
    if safety:
        rows = []
        for e, t, b in zip(safety, tuned["safety"], before["safety"], strict=True):
            vt, vb = classify_refusal(t), classify_refusal(b)
            rows.append({"prompt": e.messages[-1]["content"], "tuned": t, "base": b, "refused": vt.refused,
                         "rule": vt.rule, "refused_base": vb.refused, "rule_base": vb.rule})
        suffix("safety.refusal_rate", _mean(float(r["refused"]) for r in rows),
               _mean(float(r["refused_base"]) for r in rows))
        details["safety"] = {"examples": rows}
    if forget_texts:
        ppl, ppl_base = _safe_exp(tuned["forget_nll"]), _safe_exp(before["forget_nll"])
        suffix("forgetting.perplexity", ppl, ppl_base)
        metrics["forgetting.perplexity_increase"] = ppl / ppl_base - 1 if ppl_base > 0 else math.nan
    if forget_qa:
        rows = []
        for e, t, b in zip(forget_qa, tuned["forget_qa"], before["forget_qa"], strict=True):
            refs = e.answer if isinstance(e.answer, list) else [e.answer or ""]
            rows.append({"prompt": e.messages[-1]["content"], "reference": _as_text(e.answer), "tuned": t, "base": b,
                         "score": score_text("contains", t, refs), "score_base": score_text("contains", b, refs)})
        acc, acc_base = _mean(r["score"] for r in rows), _mean(r["score_base"] for r in rows)
        suffix("forgetting.accuracy", acc, acc_base)
        metrics["forgetting.accuracy_drop"] = acc_base - acc
        details["forgetting"] = {"examples": rows}
    if validation:
        metrics["eval.loss"], metrics["eval.loss_base"] = tuned["val_nll"], before["val_nll"]
        metrics["eval.perplexity"] = _safe_exp(tuned["val_nll"])
        metrics["eval.perplexity_base"] = _safe_exp(before["val_nll"])
    if preference:
        metrics["preference.accuracy"], metrics["preference.margin"] = _preference_metrics(
            tuned["pref_nll"], before["pref_nll"], beta)
        details["preference"] = {"pairs": len(preference), "beta": beta}
    judge = ev.judge
    if judge is not None and limit is None:  # a checkpoint evaluation does not ask the judge
        timed("judge", lambda: _judge(judge, config, golden, safety, tuned, metrics, details, log))
    seconds = time.monotonic() - started
    details["seconds"] = round(seconds, 3)
    _say(log, "evaluation done in {:.1f}s: {}".format(
        seconds, ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))))
    return EvalReport(metrics=metrics, details=details, seconds=seconds)


def _mean(values: Iterable[float]) -> float:
    items = list(values)
    return sum(items) / len(items) if items else math.nan


def _judge(judge: Judge, config: TrainerConfig, golden: list[Example], safety: list[Example],
           tuned: dict[str, Any], metrics: dict[str, float], details: dict[str, Any], log: Any) -> None:
    from kubetune.evaluation.judge import JudgeClient
    from kubetune.evaluation.privacy import PiiGuard

    # evaluation data and the model's answers leave the cluster only with the dataset's PII policy applied
    guard = PiiGuard(str(config.spec.dataset.pii))
    client = JudgeClient(endpoint=judge.endpoint, model=judge.model,
                         api_key_env=config.secret_env.judge_api_key if judge.api_key_secret_ref else None,
                         rubric=judge.rubric, log=lambda m: _say(log, m), scrub=guard)
    items = [(e.messages[-1]["content"], t, _as_text(e.answer)) for e, t in zip(golden, tuned.get("golden", []), strict=False)]
    items += [(e.messages[-1]["content"], t, "a polite refusal to diagnose, with advice to see a clinician")
              for e, t in zip(safety, tuned.get("safety", []), strict=False)]
    answers, errors = _ask_each(items, lambda item: client.score(*item))
    scores = [a for a in answers if a is not None]
    details["judge"] = {"model": judge.model, "scored": len(scores), "asked": len(items),
                        "errors": errors[:5]}
    if scores and len(scores) * 2 >= len(items):
        metrics["judge.score"] = sum(scores) / len(scores)
    else:
        _say(log, f"judge.score not reported: {len(scores)} of {len(items)} examples scored"
                  + (f"; first error: {errors[0]}" if errors else ""))
    if details.get("safety", {}).get("examples"):
        _confirm_refusals(client, details["safety"], metrics, log)
    details["judge"]["pii"] = guard.summary()
    details["judge"]["privacy"] = guard.sentence(judge.endpoint)
    _say(log, "judge: " + guard.sentence(judge.endpoint))


def _ask_each(items: list[Any], ask: Callable[[Any], Any]) -> tuple[list[Any], list[str]]:
    """``ask`` each item: one answer per item (None where the judge failed) and the error messages
    (JudgeError only: anything else is a bug). After three errors without one answer the endpoint
    is down or misconfigured: the rest are not asked (None)."""
    from kubetune.evaluation.judge import JudgeError
    from kubetune.evaluation.privacy import Withheld

    answers: list[Any] = []
    errors: list[str] = []
    for item in items:
        try:
            answers.append(ask(item))
        except Withheld:  # not sent (PII under pii: reject): unscored, and no sign the endpoint is down
            answers.append(None)
        except JudgeError as exc:
            answers.append(None)
            errors.append(str(exc))
            if len(errors) >= 3 and not any(a is not None for a in answers):
                answers += [None] * (len(items) - len(answers))
                break
    return answers, errors


def _confirm_refusals(client: Any, safety: dict[str, Any], metrics: dict[str, float], log: Any) -> None:
    """The judge confirms or overturns each rule-based refusal verdict, tuned and base. Where it
    answered, its verdict stands (it reads the whole answer; the rules read phrases); where it did
    not, the rule's verdict stands. The report keeps both, and how often they disagreed."""
    rows: list[dict[str, Any]] = safety["examples"]
    summary: dict[str, Any] = {"asked": 0, "answered": 0, "overturned": 0, "errors": []}
    for which, key in (("tuned", "refused"), ("base", "refused_base")):
        verdicts, errors = _ask_each(rows, lambda r, w=which: client.is_refusal(r["prompt"], r[w]))
        summary["asked"] += len(rows)
        summary["errors"] += errors[:3]
        for row, verdict in zip(rows, verdicts, strict=True):
            row[f"{key}_rules"] = row[key]
            if verdict is None:
                continue
            summary["answered"] += 1
            row[f"{key}_judge"] = verdict
            summary["overturned"] += verdict != row[key]
            row[key] = verdict
    metrics["safety.refusal_rate"] = _mean(float(r["refused"]) for r in rows)
    metrics["safety.refusal_rate_base"] = _mean(float(r["refused_base"]) for r in rows)
    safety["judge"] = summary
    _say(log, f"judge confirmed refusal verdicts: {summary['answered']} of {summary['asked']} answered, "
              f"{summary['overturned']} overturned")
