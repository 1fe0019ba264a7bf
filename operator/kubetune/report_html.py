"""A self-contained HTML report of one local run: verdict, gate table, before/after metrics, loss
curve (inline SVG, no scripts or external assets) and sample generations. Pure: data in, text out."""

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

from kubetune.gates import Decision

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:980px;color:#1b1f24;padding:0 1rem}
h1{font-size:1.5rem;margin-bottom:.2rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;width:100%;margin:.5rem 0}td,th{border:1px solid #ddd;padding:.3rem .5rem;
text-align:left;vertical-align:top}th{background:#f4f5f7}.num{text-align:right;font-variant-numeric:tabular-nums}
.pass{color:#0a7d32;font-weight:600}.fail{color:#c0182b;font-weight:600}.muted{color:#667}
.badge{display:inline-block;padding:.15rem .6rem;border-radius:1rem;color:#fff;font-weight:600}
.Succeeded{background:#0a7d32}.GateFailed{background:#b35c00}.Failed{background:#c0182b}
pre{white-space:pre-wrap;margin:0;font:12px/1.35 ui-monospace,monospace}
"""

# metric ⇒ (label, higher is better)
METRICS: dict[str, tuple[str, bool]] = {
    "golden.accuracy": ("golden accuracy", True),
    "safety.refusal_rate": ("refusal rate on the safety set", True),
    "eval.loss": ("validation loss", False),
    "eval.perplexity": ("validation perplexity", False),
    "forgetting.perplexity": ("perplexity on general text", False),
    "forgetting.accuracy": ("general-question accuracy", True),
    "forgetting.perplexity_increase": ("forgetting: relative perplexity increase", False),
    "forgetting.accuracy_drop": ("forgetting: accuracy drop", False),
    "judge.score": ("LLM-judge score (1-10)", True),
    "preference.accuracy": ("held-out preference accuracy (DPO)", True),
    "preference.margin": ("held-out preference margin (DPO)", True),
}


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "∞"
    return f"{value:.3f}" if abs(value) < 1000 else f"{value:,.0f}"


def metric_rows(metrics: Mapping[str, float], before: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
    """One row per reported metric: base, (an earlier stage), tuned, change."""
    rows = []
    for name, (label, _higher) in METRICS.items():
        if name not in metrics:
            continue
        base = metrics.get(f"{name}_base")
        tuned = metrics[name]
        rows.append({"metric": name, "label": label, "base": base, "before": (before or {}).get(name),
                     "tuned": tuned, "change": None if base is None else tuned - base})
    return rows


def checkpoint_table(c: Mapping[str, Any]) -> list[str]:
    """status.checkpoints as HTML: one row per checkpoint evaluation, the chosen step marked."""
    rows = c.get("evaluations") or []
    names = sorted({k for r in rows for k in r.get("metrics", {}) if not k.endswith("_base")})
    out = [f"<h2>Checkpoint evaluations</h2><p>Chosen: step {_e(c.get('chosenStep'))} of {_e(c.get('lastStep'))}"
           f"{' (stopped early)' if c.get('stoppedEarly') else ''} — {_e(c.get('reason'))}</p>",
           "<table><tr><th>step</th>" + "".join(f"<th class=num>{_e(n)}</th>" for n in names) + "<th>gates there</th></tr>"]
    for r in rows:
        chosen = r.get("step") == c.get("chosenStep")
        verdict = "pass" if r.get("passed") else "fail: " + ", ".join(r.get("failed") or [])
        out.append(f"<tr><td>{'<b>' if chosen else ''}{_e(r.get('step'))}{' (chosen)</b>' if chosen else ''}</td>"
                   + "".join(f"<td class=num>{fmt(r.get('metrics', {}).get(n))}</td>" for n in names)
                   + f"<td class={'pass' if r.get('passed') else 'fail'}>{_e(verdict)}</td></tr>")
    out.append("</table>")
    return out


def loss_svg(points: Sequence[tuple[float, float]], width: int = 640, height: int = 220) -> str:
    pts = [(float(s), float(v)) for s, v in points if v is not None and math.isfinite(float(v))]
    if len(pts) < 2:
        return '<p class="muted">not enough logged steps for a loss curve</p>'
    pad_l, pad_b, pad_t, pad_r = 48, 28, 10, 10
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(0.0, min(ys)), max(ys) * 1.05 or 1.0

    def sx(x: float) -> float:
        return pad_l + (x - x0) / (x1 - x0) * (width - pad_l - pad_r)

    def sy(y: float) -> float:
        return pad_t + (1 - (y - y0) / (y1 - y0)) * (height - pad_t - pad_b)

    path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
    ticks = "".join(
        f'<line x1="{pad_l}" x2="{width - pad_r}" y1="{sy(v):.1f}" y2="{sy(v):.1f}" stroke="#eee"/>'
        f'<text x="{pad_l - 6}" y="{sy(v) + 4:.1f}" text-anchor="end" font-size="11">{v:.2f}</text>'
        for v in (y0 + (y1 - y0) * i / 4 for i in range(5)))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
            f'aria-label="training loss by step">{ticks}'
            f'<polyline fill="none" stroke="#2563eb" stroke-width="2" points="{path}"/>'
            f'<text x="{pad_l}" y="{height - 8}" font-size="11">step {x0:.0f}</text>'
            f'<text x="{width - pad_r}" y="{height - 8}" font-size="11" text-anchor="end">step {x1:.0f}</text></svg>')


def render(*, name: str, kind: str, phase: str, reason: str | None, message: str | None,
           metrics: Mapping[str, float], decision: Decision | None, loss: Sequence[tuple[float, float]],
           details: Mapping[str, Any] | None = None, before: Mapping[str, float] | None = None,
           before_label: str = "before", artifact: str | None = None, promoted: str | None = None,
           seconds: float | None = None, checkpoints: Mapping[str, Any] | None = None) -> str:
    details = details or {}
    out = [f"<!doctype html><html lang=en><meta charset=utf-8><title>kubetune: {_e(name)}</title><style>{CSS}</style>",
           f"<h1>{_e(kind)}/{_e(name)} <span class='badge {_e(phase)}'>{_e(phase)}</span></h1>",
           f"<p>{_e(reason or '')}: {_e(message or '')}</p>"]
    facts = [("artifact", artifact), ("promoted to", promoted), ("wall time", f"{seconds:.0f} s" if seconds else None),
             ("base for comparison", (details.get("evaluation") or {}).get("base"))]
    out.append("<p class=muted>" + " · ".join(f"{k}: {_e(v)}" for k, v in facts if v) + "</p>")
    judge = (details.get("evaluation") or {}).get("judge") or {}
    if judge.get("privacy"):  # what left the cluster for the LLM judge, and how it was scrubbed
        out.append(f"<p>LLM judge: {_e(judge['privacy'])}</p>")

    out.append("<h2>Gates</h2>")
    if decision is None or not decision.gates:
        out.append("<p class=muted>no gates configured</p>" if decision else "<p class=muted>not evaluated</p>")
    else:
        out.append("<table><tr><th>metric</th><th>condition</th><th class=num>value</th><th>verdict</th></tr>")
        for g in decision.gates:
            cls, word = ("pass", "passed") if g.passed else ("fail", "failed")
            out.append(f"<tr><td>{_e(g.metric)}</td><td>{_e(g.op)} {fmt(g.threshold)}</td><td class=num>{fmt(g.value)}</td>"
                       f"<td class={cls}>{word}{'' if g.passed else ': ' + _e(g.message)}</td></tr>")
        out.append("</table>")

    out.append("<h2>Before and after</h2>")
    rows = metric_rows(metrics, before)
    if rows:
        mid = f"<th class=num>{_e(before_label)}</th>" if before else ""
        out.append(f"<table><tr><th>metric</th><th class=num>base</th>{mid}<th class=num>tuned</th><th class=num>change</th></tr>")
        for r in rows:
            better = METRICS[r["metric"]][1]
            change = r["change"]
            cls = "" if change is None or change == 0 else ("pass" if (change > 0) == better else "fail")
            mid = f"<td class=num>{fmt(r['before'])}</td>" if before else ""
            sign = "+" if change is not None and change > 0 else ""
            out.append(f"<tr><td>{_e(r['label'])}<br><span class=muted>{_e(r['metric'])}</span></td>"
                       f"<td class=num>{fmt(r['base'])}</td>{mid}<td class=num>{fmt(r['tuned'])}</td>"
                       f"<td class='num {cls}'>{sign}{fmt(change)}</td></tr>")
        out.append("</table>")
    train = {k: v for k, v in metrics.items() if k.startswith("train.")}
    if train:
        out.append("<p class=muted>" + " · ".join(f"{_e(k)} {fmt(v)}" for k, v in sorted(train.items())) + "</p>")

    out.append("<h2>Training loss</h2>" + loss_svg(loss))
    if checkpoints:
        out += checkpoint_table(checkpoints)

    evaluation = details.get("evaluation") or {}
    for key, title in (("golden", "Golden set: sample generations"), ("safety", "Safety set: sample generations")):
        examples = (evaluation.get(key) or {}).get("examples") or []
        if not examples:
            continue
        out.append(f"<h2>{title}</h2><table><tr><th>prompt</th><th>base</th><th>tuned</th></tr>")
        for ex in examples[:12]:
            if key == "golden":
                tb, tt = f"score {fmt(ex.get('score_base'))}", f"score {fmt(ex.get('score'))} (want {ex.get('reference')})"
            else:
                tb = f"{'refused' if ex.get('refused_base') else 'answered'} ({ex.get('rule_base')})"
                tt = f"{'refused' if ex.get('refused') else 'answered'} ({ex.get('rule')})"
            out.append(f"<tr><td>{_e(ex.get('prompt'))}</td><td><pre>{_e(ex.get('base'))}</pre><span class=muted>{_e(tb)}</span></td>"
                       f"<td><pre>{_e(ex.get('tuned'))}</pre><span class=muted>{_e(tt)}</span></td></tr>")
        out.append("</table>")
    out.append("</html>\n")
    return "\n".join(out)
