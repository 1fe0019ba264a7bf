"""`kubetune validate`: every example passes; a corpus of bad manifests fails with the right field path."""

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.api.spec import InstructionDataset
from kubetune.api.validate import validate_object
from kubetune.cli import main
from kubetune.cli.validate import validate_files

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = sorted(p for p in (ROOT / "examples").rglob("*.yaml") if "charts" not in p.parts)


def ftj() -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "demo"},
        "spec": {
            "baseModel": {"uri": "hf://meta-llama/Llama-3.2-1B-Instruct"},
            "method": "qlora",
            "dataset": {"uri": "pvc://data/train.jsonl", "format": "instruction"},
            "evaluation": {
                "goldenDataset": {"uri": "pvc://data/golden.jsonl"},
                "gates": [{"metric": "golden.accuracy", "op": ">=", "threshold": 0.5}],
            },
            "output": {"uri": "pvc://models/demo"},
        },
    }


def pa() -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "PreferenceAlignment",
        "metadata": {"name": "demo-dpo"},
        "spec": {
            "fineTuneJobRef": {"name": "demo"},
            "method": "dpo",
            "dataset": {"uri": "pvc://data/prefs.jsonl", "format": "preference"},
            "output": {"uri": "pvc://models/demo-dpo"},
        },
    }


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(obj: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = obj
        for part in parents:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        if value is _DELETE:
            del node[last]
        else:
            node[int(last) if last.isdigit() else last] = value
    return mutate


_DELETE = object()

# (id, base, mutation, expected field path, expected message fragment)
BAD: list[tuple[str, Callable[[], dict[str, Any]], Callable[[dict[str, Any]], None], str, str]] = [
    ("lora-r-zero", ftj, _set("spec.lora", {"r": 0}), "spec.lora.r", "must be ≥ 1"),
    ("lora-alpha-zero", ftj, _set("spec.lora", {"alpha": 0}), "spec.lora.alpha", "must be > 0"),
    ("lora-dropout-one", ftj, _set("spec.lora", {"dropout": 1}), "spec.lora.dropout", "must be < 1"),
    ("lora-targets-empty", ftj, _set("spec.lora", {"targetModules": []}), "spec.lora.targetModules", "at least 1"),
    ("method-unknown", ftj, _set("spec.method", "dora"), "spec.method", "must be one of qlora, lora, full"),
    ("method-missing", ftj, _set("spec.method", _DELETE), "spec.method", "Required value"),
    ("base-model-missing", ftj, _set("spec.baseModel", _DELETE), "spec.baseModel", "Required value"),
    ("base-uri-scheme", ftj, _set("spec.baseModel.uri", "http://x/y"), "spec.baseModel.uri", "hf://, pvc://, s3:// or file://"),
    ("quant-bits", ftj, _set("spec.quantization", {"bits": 3}), "spec.quantization.bits", "must be one of 4, 8"),
    ("quant-type", ftj, _set("spec.quantization", {"type": "int4"}), "spec.quantization.type", "nf4, fp4"),
    ("quant-with-lora", ftj, lambda o: (_set("spec.method", "lora")(o), _set("spec.quantization", {})(o)),
     "spec.quantization", "only allowed with method qlora"),
    ("lora-with-full", ftj, lambda o: (_set("spec.method", "full")(o), _set("spec.lora", {"r": 8})(o)),
     "spec.lora", "only allowed with method lora or qlora"),
    ("dataset-format", ftj, _set("spec.dataset.format", "preference"), "spec.dataset.format", "must be one of"),
    ("dataset-split-high", ftj, _set("spec.dataset.validationSplit", 0.6), "spec.dataset.validationSplit", "must be ≤ 0.5"),
    ("dataset-min-examples", ftj, _set("spec.dataset.minExamples", 0), "spec.dataset.minExamples", "must be ≥ 1"),
    ("dataset-pii", ftj, _set("spec.dataset.pii", "mask"), "spec.dataset.pii", "redact, reject, off"),
    ("dataset-error-policy", ftj, _set("spec.dataset.errorPolicy", "ignore"), "spec.dataset.errorPolicy", "fail, skip"),
    ("dataset-near-duplicates", ftj, _set("spec.dataset.nearDuplicates", "yes"), "spec.dataset.nearDuplicates", "boolean"),
    ("epochs-zero", ftj, _set("spec.training", {"epochs": 0}), "spec.training.epochs", "must be > 0"),
    ("lr-zero", ftj, _set("spec.training", {"learningRate": 0}), "spec.training.learningRate", "must be > 0"),
    ("lr-above-one", ftj, _set("spec.training", {"learningRate": 2}), "spec.training.learningRate", "must be ≤ 1"),
    ("batch-zero", ftj, _set("spec.training", {"batchSize": 0}), "spec.training.batchSize", "must be ≥ 1"),
    ("grad-accum-zero", ftj, _set("spec.training", {"gradientAccumulationSteps": 0}), "spec.training.gradientAccumulationSteps", "must be ≥ 1"),
    ("seq-too-short", ftj, _set("spec.training", {"maxSeqLength": 8}), "spec.training.maxSeqLength", "must be ≥ 16"),
    ("optimizer", ftj, _set("spec.training", {"optimizer": "sgd"}), "spec.training.optimizer", "adamw_torch"),
    ("scheduler", ftj, _set("spec.training", {"lrScheduler": "step"}), "spec.training.lrScheduler", "cosine"),
    ("warmup", ftj, _set("spec.training", {"warmupRatio": 1.5}), "spec.training.warmupRatio", "must be ≤ 1"),
    ("weight-decay", ftj, _set("spec.training", {"weightDecay": -0.1}), "spec.training.weightDecay", "must be ≥ 0"),
    ("gpus-negative", ftj, _set("spec.resources", {"gpus": -1}), "spec.resources.gpus", "must be ≥ 0"),
    ("cpu-job-without-memory", ftj, _set("spec.resources", {"gpus": 0}), "spec.resources.memory",
     "a CPU job (gpus 0) needs resources.memory"),
    ("pa-cpu-job-without-memory", pa, _set("spec.resources", {"gpus": 0, "cpu": "4"}), "spec.resources.memory",
     "needs resources.memory"),
    ("nodes-zero", ftj, _set("spec.resources", {"nodes": 0}), "spec.resources.nodes", "must be ≥ 1"),
    ("gpu-memory", ftj, _set("spec.resources", {"gpuMemory": "eighty"}), "spec.resources.gpuMemory", "quantity"),
    ("gate-op", ftj, _set("spec.evaluation.gates.0.op", "=="), "spec.evaluation.gates[0].op", ">=, >, <=, <"),
    ("gate-metric", ftj, _set("spec.evaluation.gates.0.metric", "bleu"), "spec.evaluation.gates[0].metric", "golden.accuracy"),
    ("gate-threshold-missing", ftj, _set("spec.evaluation.gates.0.threshold", _DELETE), "spec.evaluation.gates[0].threshold", "Required value"),
    ("gate-needs-dataset", ftj, _set("spec.evaluation.goldenDataset", _DELETE), "spec.evaluation.gates", "needs spec.evaluation.goldenDataset"),
    ("gate-impossible", ftj, _set("spec.evaluation.gates.0.threshold", 1.5), "spec.evaluation.gates[0].threshold", "can never pass"),
    ("scorer", ftj, _set("spec.evaluation.goldenDataset.scorer", "bleu"), "spec.evaluation.goldenDataset.scorer", "exact_match"),
    ("eval-loss-no-split", ftj, lambda o: (_set("spec.dataset.validationSplit", 0)(o),
                                           _set("spec.evaluation.gates.0", {"metric": "eval.loss", "op": "<=", "threshold": 2})(o)),
     "spec.evaluation.gates[0].metric", "needs a validation split"),
    ("judge-endpoint", ftj, _set("spec.evaluation.judge", {"endpoint": "ftp://x", "model": "m"}), "spec.evaluation.judge.endpoint", "http"),
    ("output-missing", ftj, _set("spec.output", _DELETE), "spec.output", "Required value"),
    ("backoff-high", ftj, _set("spec.backoffLimit", 11), "spec.backoffLimit", "must be ≤ 10"),
    ("checkpoint-zero", ftj, _set("spec.checkpoint", {"everySteps": 0}), "spec.checkpoint.everySteps", "must be ≥ 1"),
    ("unknown-spec-field", ftj, _set("spec.learningRate", 0.1), "spec.learningRate", "unknown field"),
    ("unknown-nested-field", ftj, _set("spec.lora", {"rank": 8}), "spec.lora.rank", "unknown field"),
    ("wrong-type", ftj, _set("spec.training", {"batchSize": "four"}), "spec.training.batchSize", "must be of type integer"),
    ("suspend-type", ftj, _set("spec.suspend", "yes"), "spec.suspend", "must be of type boolean"),
    ("name-missing", ftj, _set("metadata.name", _DELETE), "metadata.name", "Required value"),
    ("name-invalid", ftj, _set("metadata.name", "My_Job"), "metadata.name", "RFC 1123"),
    ("api-version", ftj, _set("apiVersion", "kubetune.io/v1"), "apiVersion", "kubetune.io/v1alpha1"),
    ("spec-missing", ftj, _set("spec", _DELETE), "spec", "Required value"),
    ("pa-both-sources", pa, _set("spec.baseModel", {"uri": "hf://a/b"}), "spec", "exactly one of spec.fineTuneJobRef or spec.baseModel"),
    ("pa-no-source", pa, _set("spec.fineTuneJobRef", _DELETE), "spec", "exactly one of"),
    ("pa-method", pa, _set("spec.method", "ppo"), "spec.method", "must be one of dpo"),
    ("pa-beta", pa, _set("spec.dpo", {"beta": 0}), "spec.dpo.beta", "must be > 0"),
    ("pa-beta-high", pa, _set("spec.dpo", {"beta": 1.5}), "spec.dpo.beta", "must be ≤ 1"),
    ("pa-loss-type", pa, _set("spec.dpo", {"lossType": "kto"}), "spec.dpo.lossType", "sigmoid"),
    ("pa-reference", pa, _set("spec.dpo", {"referenceModel": "copy"}), "spec.dpo.referenceModel", "implicit, base"),
    ("pa-format", pa, _set("spec.dataset.format", "chat"), "spec.dataset.format", "preference"),
    ("pa-ref-with-lora", pa, _set("spec.lora", {"r": 8}), "spec.fineTuneJobRef", "come from the referenced FineTuneJob"),
    ("pa-adapter-without-base", pa, _set("spec.adapter", {"uri": "pvc://a/b"}), "spec.adapter", "goes with spec.baseModel"),
    ("pa-packing", pa, _set("spec.training", {"packing": True}), "spec.training.packing", "not supported for DPO"),
    ("pa-sft-weight", pa, _set("spec.dpo", {"sftWeight": -1}), "spec.dpo.sftWeight", "must be ≥ 0"),
    ("pa-sft-weight-twice", pa, _set("spec.dpo", {"lossType": "sft", "sftWeight": 1}), "spec.dpo.sftWeight", "already sft"),
    ("replay-ratio", ftj, _set("spec.dataset.replay", {"uri": "pvc://data/general.jsonl", "ratio": 0.95}),
     "spec.dataset.replay.ratio", "must be ≤ 0.9"),
    ("replay-ratio-zero", ftj, _set("spec.dataset.replay", {"uri": "pvc://data/general.jsonl", "ratio": 0}),
     "spec.dataset.replay.ratio", "must be > 0"),
    ("replay-uri", ftj, _set("spec.dataset.replay", {"uri": "ftp://x", "ratio": 0.2}), "spec.dataset.replay.uri", "scheme hf://"),
    ("pa-replay", pa, _set("spec.dataset.replay", {"uri": "pvc://data/general.jsonl", "ratio": 0.2}),
     "spec.dataset.replay", "unknown field"),
    ("preference-gate-on-sft", ftj, _set("spec.evaluation.gates.0", {"metric": "preference.accuracy", "op": ">=",
                                                                      "threshold": 0.8}),
     "spec.evaluation.gates[0].metric", "PreferenceAlignment (DPO) only"),
    ("pa-preference-gate-no-split", pa, lambda o: (_set("spec.dataset.validationSplit", 0)(o), _set(
        "spec.evaluation", {"gates": [{"metric": "preference.margin", "op": ">", "threshold": 0}]})(o)),
     "spec.evaluation.gates[0].metric",
     "needs a validation split"),
    ("checkpoints-every-zero", ftj, _set("spec.evaluation.checkpoints", {"everySteps": 0, "selectBy": "golden.accuracy"}),
     "spec.evaluation.checkpoints.everySteps", "must be ≥ 1"),
    ("checkpoints-select-by", ftj, _set("spec.evaluation.checkpoints", {"everySteps": 10, "selectBy": "bleu"}),
     "spec.evaluation.checkpoints.selectBy", "golden.accuracy"),
    ("checkpoints-select-needs-set", ftj, _set("spec.evaluation.checkpoints", {"everySteps": 10,
                                                                             "selectBy": "safety.refusal_rate"}),
     "spec.evaluation.checkpoints.selectBy", "needs spec.evaluation.safetyDataset"),
    ("checkpoints-select-no-split", ftj, lambda o: (_set("spec.dataset.validationSplit", 0)(o), _set(
        "spec.evaluation.checkpoints", {"everySteps": 10, "selectBy": "eval.loss"})(o)),
     "spec.evaluation.checkpoints.selectBy", "needs a validation split"),
    ("checkpoints-patience", ftj, _set("spec.evaluation.checkpoints", {"everySteps": 10, "selectBy": "golden.accuracy",
                                                                     "patience": 0}),
     "spec.evaluation.checkpoints.patience", "must be ≥ 1"),
]


@pytest.mark.parametrize(("case", "base", "mutate", "path", "fragment"), BAD, ids=[b[0] for b in BAD])
def test_bad_manifest_names_the_field(case: str, base: Callable[[], dict[str, Any]],
                                      mutate: Callable[[dict[str, Any]], None], path: str, fragment: str) -> None:
    obj = copy.deepcopy(base())
    mutate(obj)
    problems = [p for p in validate_object(obj) if p.severity == "error"]
    assert problems, f"{case}: expected a problem"
    matching = [p for p in problems if p.path == path]
    assert matching, f"{case}: no problem at {path}: {[str(p) for p in problems]}"
    assert any(fragment in p.message for p in matching), f"{case}: {[str(p) for p in matching]}"


def test_corpus_is_at_least_thirty() -> None:
    assert len(BAD) >= 30


@pytest.mark.parametrize("base", [ftj, pa])
def test_good_base_manifests_are_valid(base: Callable[[], dict[str, Any]]) -> None:
    assert [p for p in validate_object(base()) if p.severity == "error"] == []


def test_immutability_rule_runs_on_update_only() -> None:
    old = ftj()
    new = copy.deepcopy(old)
    new["spec"]["method"] = "lora"
    problems = validate_object(new, old=old)
    assert any(p.path == "spec.method" and "immutable" in p.message for p in problems)
    suspended = copy.deepcopy(old)
    suspended["spec"]["suspend"] = True
    assert [p for p in validate_object(suspended, old=old) if p.severity == "error"] == []


def test_near_duplicates_is_off_by_default_and_fixed_after_creation() -> None:
    assert InstructionDataset(uri="pvc://d/train.jsonl", format="chat").near_duplicates is False
    old = ftj()
    new = copy.deepcopy(old)
    new["spec"]["dataset"]["nearDuplicates"] = True
    assert [p for p in validate_object(new) if p.severity == "error"] == []
    assert any(p.path == "spec.dataset" and "immutable" in p.message for p in validate_object(new, old=old))


def test_oom_retry_and_tracking_fields() -> None:
    obj = ftj()
    obj["spec"]["training"] = {"oomRetry": {"maxRetries": 2}}
    obj["spec"]["tracking"] = {"mlflow": {"trackingUri": "http://mlflow:5000", "experiment": "e",
                                          "credentialsSecret": {"name": "mlflow-creds"}}}
    assert validate_object(obj) == []
    obj["spec"]["training"] = {"oomRetry": {"maxRetries": 2}, "batchSize": 1}  # checkpointing is on by default
    (warning,) = validate_object(obj)
    assert (warning.path, warning.severity) == ("spec.training.oomRetry", "warning") and "nothing smaller" in warning.message
    obj["spec"]["training"] = {"oomRetry": {"maxRetries": 0}}
    assert any(p.path.startswith("spec.training.oomRetry.maxRetries") for p in validate_object(obj))
    obj["spec"]["training"] = {}
    obj["spec"]["tracking"]["mlflow"]["trackingUri"] = "mlflow:5000"
    assert any(p.path.startswith("spec.tracking.mlflow.trackingUri") for p in validate_object(obj))


@pytest.mark.parametrize("example", EXAMPLES, ids=[str(p.relative_to(ROOT)) for p in EXAMPLES])
def test_every_example_is_valid(example: Path) -> None:
    lines, ok = validate_files([str(example), *map(str, EXAMPLES)], local=True)
    assert ok, "\n".join(lines)


def test_cli_output_format_and_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = ftj()
    bad["spec"]["lora"] = {"r": 0}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    assert main(["validate", "-f", str(path)]) == 1
    assert f"{path}: FineTuneJob/demo: spec.lora.r: must be ≥ 1" in capsys.readouterr().out
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(ftj()))
    assert main(["validate", "-f", str(good)]) == 0


@pytest.mark.parametrize(("content", "fragment"), [
    ("", "empty file"),
    ("spec: [unclosed", "invalid YAML (line 1"),
    ("\x00\x01binary", "invalid YAML"),
])
def test_unreadable_files_get_clear_messages(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, fragment: str) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(content)
    assert main(["validate", "-f", str(path)]) == 1
    out = capsys.readouterr().out
    assert fragment in out and "Traceback" not in out


def test_multi_document_and_foreign_kinds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = ftj()
    bad["metadata"]["name"] = "second"
    bad["spec"]["method"] = "dora"
    docs = [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}, ftj(), bad]
    path = tmp_path / "all.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    assert main(["validate", "-f", str(path)]) == 1
    out = capsys.readouterr().out
    assert "ConfigMap/x: skipped: ConfigMap is not a kubetune kind" in out
    assert "FineTuneJob/demo: valid" in out
    assert "FineTuneJob/second: spec.method:" in out


def test_missing_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "-f", "/nonexistent.yaml"]) == 1
    assert "no such file" in capsys.readouterr().out


def test_scalar_document(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("just a string\n")
    assert main(["validate", "-f", str(path)]) == 0  # not a kubetune object: skipped with a note
    assert "skipped" in capsys.readouterr().out


CPU_JOB = {"gpus": 0, "memory": "8Gi", "cpu": "2"}


@pytest.mark.parametrize("method", ["qlora", "lora", "full"])
def test_cpu_job_is_valid_with_memory(method: str) -> None:
    """gpus 0 with resources.memory is a CPU job, any method: bitsandbytes runs QLoRA's 4-bit base on CPU."""
    obj = ftj()
    obj["spec"]["method"] = method
    obj["spec"]["resources"] = dict(CPU_JOB)
    assert [str(p) for p in validate_object(obj) if p.severity == "error"] == []


def test_cpu_job_on_two_nodes_is_valid() -> None:
    """gpus 0 over nodes 2: one gloo process per pod (an Indexed Job of two CPU pods)."""
    obj = ftj()
    obj["spec"]["method"] = "lora"
    obj["spec"]["quantization"] = None
    obj["spec"]["resources"] = {**CPU_JOB, "nodes": 2}
    obj["spec"] = {k: v for k, v in obj["spec"].items() if v is not None}
    assert [str(p) for p in validate_object(obj) if p.severity == "error"] == []


@pytest.mark.parametrize(("cpu", "ok"), [("2", True), ("0.5", True), ("1500m", True), ("1.5m", False), ("2Gi", False)])
def test_cpu_takes_cores_or_millicores(cpu: str, ok: bool) -> None:
    obj = ftj()
    obj["spec"]["resources"] = {**CPU_JOB, "cpu": cpu}
    errors = [str(p) for p in validate_object(obj) if p.severity == "error"]
    assert (errors == []) == ok and all("spec.resources.cpu" in e for e in errors), errors


def test_cpu_job_ignores_gpu_memory() -> None:
    """gpuMemory has a schema default, so an explicit value cannot be told from it: it is ignored (the
    description says so), never refused."""
    obj = ftj()
    obj["spec"]["resources"] = {**CPU_JOB, "gpuMemory": "24Gi"}
    assert [str(p) for p in validate_object(obj) if p.severity == "error"] == []


def test_cpu_job_that_does_not_fit_names_resources_memory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    obj = ftj()
    obj["spec"]["baseModel"]["uri"] = "hf://meta-llama/Llama-3.1-8B-Instruct"
    obj["spec"]["resources"] = {"gpus": 0, "memory": "4Gi"}
    path = tmp_path / "cpu.yaml"
    path.write_text(yaml.safe_dump(obj))
    assert main(["validate", "-f", str(path)]) == 1
    out = capsys.readouterr().out
    assert "spec.resources.memory: does not fit: QLoRA fine-tune of llama-3-8b needs ~" in out
    assert "memory per pod (CPU job); 4 GiB available in resources.memory" in out
    assert "gpuMemory" not in out and "per GPU" not in out
