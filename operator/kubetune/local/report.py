"""What `kubetune run` leaves behind for each job: `<output>/kubetune/status.json` (the status the
operator would set: kubetune.derivation.outcome_status), `<output>/kubetune/report.html`, and the table
printed on the terminal — base vs tuned for every metric, with each gate's verdict."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kubetune.api.enums import Phase
from kubetune.api.trainer_contract import TrainerResult
from kubetune.local.outcome import Outcome

Say = Callable[[str], None]


def write_status(output: Path, status: Mapping[str, Any]) -> None:
    state = output / "kubetune"
    state.mkdir(parents=True, exist_ok=True)
    (state / "status.json").write_text(json.dumps(status, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_report(outcome: Outcome, result: TrainerResult, history: Mapping[int, float]) -> Path | None:
    """report.html: the outcome, the loss curve (the trainer's log, filled in from the progress seen
    here), the metrics and gates; its path, or None when the job has no output folder."""
    if outcome.output is None:
        return None
    from kubetune.report_html import render

    points = {int(h["step"]): float(h["loss"]) for h in result.details.get("trainLog", [])
              if isinstance(h, dict) and "step" in h and "loss" in h}
    for step, loss in history.items():
        points.setdefault(step, loss)
    html = render(name=outcome.name, kind=outcome.kind, phase=str(outcome.phase), reason=outcome.reason,
                  message=outcome.message, metrics=outcome.metrics, decision=outcome.decision,
                  loss=sorted(points.items()), details=result.details, before=outcome.before,
                  before_label="after SFT", artifact=outcome.artifact, promoted=outcome.promoted,
                  seconds=outcome.seconds or result.details.get("seconds"),
                  checkpoints=result.checkpoints.model_dump(by_alias=True, exclude_none=True, mode="json")
                  if result.checkpoints is not None else None)
    path = outcome.output / "kubetune" / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html, encoding="utf-8")
    return path


def print_outcome(o: Outcome, say: Say) -> None:
    from kubetune.report_html import fmt, metric_rows

    say(f"  {o.kind}/{o.name}: {o.phase} ({o.reason}) in {o.seconds:.0f}s")
    for line in o.message.splitlines():
        say(f"    {line}")
    rows = metric_rows(o.metrics, o.before)
    if rows:
        gates = {g.metric: g for g in (o.decision.gates if o.decision else [])}
        mid = f" {'after SFT':>10}" if o.before else ""
        say(f"  {'metric':<32} {'base':>10}{mid} {'tuned':>10} {'change':>10}   gate")
        for r in rows:
            g = gates.get(r["metric"])
            verdict = f"{g.op} {fmt(g.threshold)} {'PASS' if g.passed else 'FAIL'}" if g else ""
            change = r["change"]
            ch = "" if change is None else ("+" if change > 0 else "") + fmt(change)
            mid = f" {fmt(r['before']):>10}" if o.before else ""
            say(f"  {r['metric']:<32} {fmt(r['base']):>10}{mid} {fmt(r['tuned']):>10} {ch:>10}   {verdict}")
        for name, g in gates.items():
            if name not in {r["metric"] for r in rows}:
                say(f"  {name:<32} {'':>10} {'–':>10} {'':>10}   {g.op} {fmt(g.threshold)} FAIL (not measured)")
    train = {k: v for k, v in o.metrics.items() if k.startswith("train.")}
    if train:
        say("  " + "  ".join(f"{k} {fmt(v)}" for k, v in sorted(train.items())))
    checkpoints = (o.status or {}).get("checkpoints")
    if checkpoints:
        say(f"  checkpoint: step {checkpoints.get('chosenStep')} of {checkpoints.get('lastStep')} — "
            f"{checkpoints.get('reason')}")
    if o.artifact:
        say(f"  artifact: {o.artifact_uri or o.artifact}" + ("  (not promoted)" if o.phase == Phase.GATE_FAILED else ""))
    if o.promotion is not None:  # what the trainer did, as it reported it
        p = o.promotion
        say(f"  promoted by the trainer: {p.uri}  ({p.files} files, {p.bytes:,} bytes, manifest {p.manifest_digest})")
    if o.report_html:
        say(f"  report: {o.report_html}")


def print_summary(outcomes: list[Outcome], code: int, say: Say) -> None:
    say("\n== summary")
    for o in outcomes:
        say(f"  {o.kind + '/' + o.name:<48} {o.phase!s:<11} {o.reason:<18} {o.seconds:6.0f}s")
    say(f"  exit status {code}")
