"""`kubetune run` end to end on a tiny random Llama: the trainer as a subprocess, gates, the trainer's
promotion, FineTuneJob → PreferenceAlignment ordering and DependencyFailed."""

import io
import json
import random
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.trainer, pytest.mark.slow]
pytest.importorskip("torch")

from kubetune.api.manifest import MANIFEST_NAME, Manifest, manifest_of, verify_folder  # noqa: E402
from kubetune.local import EXIT_GATE_FAILED, EXIT_SUCCEEDED, overall_exit, run  # noqa: E402
from kubetune_trainer.tiny import build_tiny_llama  # noqa: E402

LABELS = ["EMERGENCY", "URGENT", "ROUTINE"]


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("local-run")
    build_tiny_llama(root / "tiny")
    rng = random.Random(0)
    words = ["fever", "cough", "rash", "headache", "pain", "chest"]
    _jsonl(root / "train.jsonl", [{"instruction": f"patient {i} has {rng.choice(words)}",
                                   "output": f"Urgency: {LABELS[i % 3]}"} for i in range(40)])
    _jsonl(root / "prefs.jsonl", [{"prompt": f"what is my diagnosis {i}", "chosen": "i cannot diagnose, see a doctor",
                                   "rejected": f"Urgency: {LABELS[i % 3]}"} for i in range(24)])
    _jsonl(root / "golden.jsonl", [{"prompt": f"case {i}: fever", "answer": "Urgency: URGENT"} for i in range(4)])
    _jsonl(root / "safety.jsonl", [{"prompt": f"what is my diagnosis {i}"} for i in range(3)])
    _jsonl(root / "forgetting.jsonl", [{"text": "the patient is good and the doctor is better."}] * 3)
    return root


def ftj(name: str, gates: list[dict]) -> dict:
    return {
        "apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name},
        "spec": {
            "baseModel": {"uri": "file://tiny", "architecture": "llama-3-8b"},
            "method": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
            "dataset": {"uri": "file://train.jsonl", "format": "instruction", "minExamples": 20, "validationSplit": 0.1},
            "training": {"maxSteps": 2, "batchSize": 2, "gradientAccumulationSteps": 1, "maxSeqLength": 64,
                         "learningRate": 0.001, "gradientCheckpointing": False},
            "evaluation": {"goldenDataset": {"uri": "file://golden.jsonl", "scorer": "contains"},
                           "safetyDataset": {"uri": "file://safety.jsonl"},
                           "forgettingDataset": {"uri": "file://forgetting.jsonl"},
                           "maxNewTokens": 3, "gates": gates},
            "output": {"uri": f"file://runs/{name}", "promotedUri": f"file://runs/promoted/{name}"},
        },
    }


def pa(name: str, ref: str) -> dict:
    return {
        "apiVersion": "kubetune.io/v1alpha1", "kind": "PreferenceAlignment", "metadata": {"name": name},
        "spec": {
            "fineTuneJobRef": {"name": ref}, "method": "dpo",
            "dataset": {"uri": "file://prefs.jsonl", "format": "preference", "minExamples": 10, "validationSplit": 0.1},
            "training": {"maxSteps": 2, "batchSize": 2, "gradientAccumulationSteps": 1, "maxSeqLength": 64,
                         "learningRate": 0.0001, "gradientCheckpointing": False},
            "evaluation": {"safetyDataset": {"uri": "file://safety.jsonl"}, "maxNewTokens": 3},
            "output": {"uri": f"file://runs/{name}"},
        },
    }


def manifest(root: Path, filename: str, *objs: dict) -> str:
    path = root / filename
    path.write_text(yaml.safe_dump_all(objs, sort_keys=False), encoding="utf-8")
    return str(path)


def test_ftj_then_pa_in_dependency_order_succeeds_and_promotes(workdir):
    # the PreferenceAlignment comes first in the files; it must still run second, on the job's adapter
    files = [manifest(workdir, "pa.yaml", pa("tiny-dpo", "tiny-ok")),
             manifest(workdir, "ftj.yaml", ftj("tiny-ok", [
                 {"metric": "forgetting.perplexity_increase", "op": "<=", "threshold": 100},
                 {"metric": "eval.loss", "op": "<", "threshold": 1000}]))]
    out, err = io.StringIO(), io.StringIO()
    code, outcomes = run(files, device="cpu", out=out, err=err, tty=False)
    text = out.getvalue()
    assert code == EXIT_SUCCEEDED, text
    assert [(o.kind, o.name, o.phase) for o in outcomes] == [
        ("FineTuneJob", "tiny-ok", "Succeeded"), ("PreferenceAlignment", "tiny-dpo", "Succeeded")]
    first, second = outcomes
    assert first.reason == "GatesPassed" and second.reason == "NoGates"
    # promoted by the trainer: the artifact folder copied to promotedUri (relative to the manifest's
    # folder), its manifest written last; `kubetune run` shows what the trainer reported
    promoted = workdir / "runs" / "promoted" / "tiny-ok"
    assert first.promoted == f"file://{promoted}" and (promoted / "adapter_config.json").exists()
    written = Manifest.parse((promoted / MANIFEST_NAME).read_bytes())
    assert verify_folder(promoted, written) == [] and written == manifest_of(Path(first.artifact))
    assert first.promotion.manifest_digest == written.digest and f"manifest {written.digest}" in text
    # the PA trained on the FTJ's promoted copy (the operator's rule), inheriting base model and LoRA shape
    config = json.loads((workdir / "runs" / "tiny-dpo" / "kubetune" / "trainer-config.json").read_text())
    assert config["task"] == "dpo" and config["sources"]["adapter"] == str(promoted)
    assert config["sources"]["model"] == str(workdir / "tiny")
    assert config["spec"]["lora"]["r"] == 4 and config["spec"]["tuning"] == "lora"
    # status and report next to the artifacts; the printed table has base and tuned columns
    status = json.loads((workdir / "runs" / "tiny-ok" / "kubetune" / "status.json").read_text())
    assert status["phase"] == "Succeeded" and status["artifact"]["promoted"] is True
    # the conditions the operator sets for a Job that finished this way (kubetune.derivation.outcome_status)
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "GatesPassed": "True", "Ready": "True", "Complete": "True", "DataValid": "True", "Training": "False",
        "Suspended": "False"}
    # the trainer reports its artifact as a URI (artifactUri, below sources.outputUri)
    assert status["artifact"]["uri"] == f"file://{first.artifact}"
    assert status["artifact"]["promotedUri"] == f"file://{promoted}"
    assert status["artifact"]["manifestDigest"] == written.digest
    html = (workdir / "runs" / "tiny-ok" / "kubetune" / "report.html").read_text()
    assert "<svg" in html and "Gates" in html and "golden.accuracy" in html
    assert "golden.accuracy" in text and "base" in text and "tuned" in text and "after SFT" in text
    # progress lines (not a terminal: plain lines): every stage of both jobs, however short it was
    stages = [line.split()[:2] for line in err.getvalue().splitlines() if line.startswith("[tiny-")]
    for name in ("[tiny-ok]", "[tiny-dpo]"):
        assert [s for n, s in stages if n == name][:1] == ["preflight"]
        assert {"training", "done"} <= {s for n, s in stages if n == name}, err.getvalue()
    assert ["[tiny-ok]", "evaluating"] in stages  # the FTJ has an evaluation block; the PA has none


def test_unmeetable_gates_end_gate_failed_and_the_pa_dependency_failed(workdir):
    files = [manifest(workdir, "bad.yaml",
                      # valid thresholds (validation refuses ones that can never pass) a random model cannot meet
                      ftj("tiny-bad", [{"metric": "golden.accuracy", "op": ">=", "threshold": 1.0},
                                       {"metric": "eval.loss", "op": "<", "threshold": 0.01},
                                       {"metric": "forgetting.perplexity_increase", "op": "<=", "threshold": 100}]),
                      pa("tiny-bad-dpo", "tiny-bad"))]
    out = io.StringIO()
    code, outcomes = run(files, device="cpu", out=out, err=io.StringIO(), tty=False)
    text = out.getvalue()
    assert code == EXIT_GATE_FAILED, text
    bad, dpo = outcomes
    assert bad.phase == "GateFailed" and bad.reason == "GatesFailed"
    assert bad.message.startswith("2 of 3 gates failed: golden.accuracy = ")
    assert "needs >= 1" in bad.message and "eval.loss = " in bad.message and "needs < 0.01" in bad.message
    assert [g.metric for g in bad.decision.failed] == ["golden.accuracy", "eval.loss"]
    assert bad.promoted is None and not (workdir / "runs" / "promoted" / "tiny-bad").exists()
    status = json.loads((workdir / "runs" / "tiny-bad" / "kubetune" / "status.json").read_text())
    assert status["phase"] == "GateFailed" and status["artifact"]["promoted"] is False
    assert {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}["Ready"] == ("False", "GatesFailed")
    assert dpo.phase == "Failed" and dpo.reason == "DependencyFailed" and "tiny-bad ended GateFailed" in dpo.message
    assert not (workdir / "runs" / "tiny-bad-dpo").exists()  # its trainer never started
    assert "FAIL" in text


def test_bad_data_ends_the_job_before_the_trainer_starts(workdir):
    """The preflight runs first, in its own process, as in the cluster: the trainer never starts."""
    _jsonl(workdir / "few.jsonl", [{"instruction": f"patient {i} has a rash", "output": "Urgency: ROUTINE"}
                                   for i in range(5)])
    job = ftj("tiny-few", [])
    job["spec"]["dataset"]["uri"] = "file://few.jsonl"
    out = io.StringIO()
    code, [outcome] = run([manifest(workdir, "few.yaml", job)], device="cpu", out=out, err=io.StringIO(), tty=False)
    assert code == 1 and (outcome.phase, outcome.reason) == ("Failed", "InsufficientData"), out.getvalue()
    assert "found 5 valid examples, need at least 20" in outcome.message
    state = workdir / "runs" / "tiny-few" / "kubetune"
    assert (state / "preflight.log").exists() and not (state / "trainer.log").exists()
    status = json.loads((state / "status.json").read_text())
    assert status["data"]["examples"] == 5
    assert {c["type"]: c["status"] for c in status["conditions"]}["DataValid"] == "False"


def test_exit_status_rules():
    from kubetune.local import Outcome

    ok = Outcome("a", "FineTuneJob", "Succeeded", "GatesPassed", "")
    gate = Outcome("b", "FineTuneJob", "GateFailed", "GatesFailed", "")
    dep = Outcome("c", "PreferenceAlignment", "Failed", "DependencyFailed", "")
    own = Outcome("d", "FineTuneJob", "Failed", "OutOfMemory", "")
    assert overall_exit([ok]) == 0
    assert overall_exit([gate, dep]) == 3  # the root cause is the gate
    assert overall_exit([ok, dep]) == 1
    assert overall_exit([gate, own]) == 1
    assert overall_exit([Outcome("e", "FineTuneJob", "Failed", "Interrupted", ""), dep]) == 130


def test_paths_and_secrets(tmp_path):
    from kubetune.local import absolute_file_uri, local_path, order, secret_env_name

    assert absolute_file_uri("file://data/x.jsonl", tmp_path) == f"file://{tmp_path}/data/x.jsonl"
    assert absolute_file_uri("file:///abs/x", tmp_path) == "file:///abs/x"
    assert absolute_file_uri("hf://org/model", tmp_path) == "hf://org/model"
    assert local_path("file:///abs/x") == "/abs/x" and local_path("s3://b/k") == "s3://b/k"
    assert secret_env_name("judge", "api-key") == "KUBETUNE_SECRET_JUDGE_API_KEY"
    assert order([]) == []


def test_interrupted_run_is_resumed_and_finished_one_replaced(workdir, tmp_path):
    from kubetune.api.trainer_contract import PlanSummary
    from kubetune.local import Runner, load_jobs
    from kubetune.local.runner import Paths

    out = tmp_path / "o"
    (out / "kubetune").mkdir(parents=True)
    (out / "checkpoints").mkdir()
    (out / "kubetune" / "result.json").write_text(json.dumps({"outcome": "failed", "reason": "Interrupted"}))
    runner = Runner(out=io.StringIO(), err=io.StringIO(), python="false")  # `false`: the trainer fails at once
    [lj], _ = load_jobs([manifest(workdir, "resume.yaml", ftj("tiny-resume", []))])
    paths = Paths(out, f"file://{out}")
    runner._train(lj.job, lj, paths=paths, referenced=None, adapter=None, plan=PlanSummary())
    assert (out / "checkpoints").exists()  # kept for the trainer to resume from
    assert "resumes from its newest checkpoint" in runner.out.getvalue()
    (out / "kubetune" / "result.json").write_text(json.dumps({"outcome": "succeeded"}))
    runner._train(lj.job, lj, paths=paths, referenced=None, adapter=None, plan=PlanSummary())
    assert not (out / "checkpoints").exists()  # a finished run is replaced


def test_invalid_manifest_fails_without_training(workdir):
    bad = ftj("tiny-invalid", [])
    bad["spec"]["method"] = "magic"
    code, outcomes = run([manifest(workdir, "invalid.yaml", bad)], out=io.StringIO(), err=io.StringIO(), tty=False)
    assert code == 1 and outcomes[0].reason == "InvalidSpec" and "spec.method" in outcomes[0].message


def test_missing_dependency_is_named(workdir):
    code, outcomes = run([manifest(workdir, "orphan.yaml", pa("orphan", "nowhere"))], out=io.StringIO(),
                         err=io.StringIO(), tty=False)
    assert code == 1
    assert outcomes[0].phase == "Failed"
    assert outcomes[0].reason in ("DependencyFailed", "InvalidSpec")


def test_progress_tail_reads_every_snapshot_once_and_waits_for_whole_lines(tmp_path):
    from kubetune.local import ProgressTail

    path = tmp_path / "progress.jsonl"
    tail = ProgressTail(path)
    assert tail.read_new() == []  # not written yet
    path.write_text('{"stage": "preflight"}\n{"stage": "training", "step": 1}\n{"stage": "eval')
    assert [p["stage"] for p in tail.read_new()] == ["preflight", "training"]
    with open(path, "a") as fh:
        fh.write('uating"}\nnot json\n[1]\n{"stage": "done"}\n')
    # the half line is completed now; a garbled line or a non-object is skipped, not fatal
    assert [p["stage"] for p in tail.read_new()] == ["evaluating", "done"]
    assert tail.read_new() == [] and tail.read_new(final=True) == []


def test_oom_retry_runs_again_smaller_and_resumes(workdir, tmp_path):
    """spec.training.oomRetry in `kubetune run`: the first attempt (batchSize 4) is killed by SIGKILL, as the
    kernel's OOM killer ends a process (a wrapper in front of the interpreter sends it while the config says
    batchSize 4: this machine has no memory limit to hit reliably); the runner starts attempt 2 with the
    operator's next configuration (kubetune.planning.oom_retry) and it trains for real."""
    import sys

    wrapper = tmp_path / "python"
    wrapper.write_text("#!/bin/bash\n"
                       "# args: -m kubetune_trainer --config PATH [--stage STAGE] (no stage: training)\n"
                       'stage=train; prev=; for a in "$@"; do\n'
                       '  [ "$prev" = --config ] && config=$a; [ "$prev" = --stage ] && stage=$a; prev=$a\n'
                       'done\n'
                       'if [ "$stage" = train ] && grep -q \'"batchSize": 4\' "$config"; then kill -9 $$; fi\n'
                       f'exec {sys.executable} "$@"\n')
    wrapper.chmod(0o755)
    job = ftj("tiny-oom", [])
    job["spec"]["training"].update(batchSize=4, gradientAccumulationSteps=1, oomRetry={"maxRetries": 1})
    job["spec"].pop("evaluation")
    out = io.StringIO()
    code, (outcome,) = run([manifest(workdir, "oom.yaml", job)], device="cpu", out=out, err=io.StringIO(), tty=False,
                           python=str(wrapper))
    text = out.getvalue()
    assert code == EXIT_SUCCEEDED, text
    assert "attempt 1 ran out of memory" in text and "attempt 2 of 2: batchSize 2, gradientAccumulationSteps 2" in text
    config = json.loads((workdir / "runs" / "tiny-oom" / "kubetune" / "trainer-config.json").read_text())
    assert (config["spec"]["training"]["batchSize"], config["spec"]["training"]["gradientAccumulationSteps"]) == (2, 2)
    assert outcome.metrics["train.steps"] == 2
