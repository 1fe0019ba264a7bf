"""`kubetune run` with every location on s3:// (SeaweedFS on 127.0.0.1): a tiny QLoRA FineTuneJob reads its
base model and every data set from S3, writes its artifact and its promotion to S3 (the promoted folder
carries its manifest, every file matches it), and a chained DPO PreferenceAlignment trains on the promoted
adapter from S3. No credential value appears in any output."""

from __future__ import annotations

import hashlib
import io
import json
import random
from pathlib import Path

import pytest
import yaml
from conftest import LABELS, SYMPTOMS
from s3server import SECRET_KEY

pytestmark = [pytest.mark.trainer, pytest.mark.slow]

from kubetune.api.manifest import MANIFEST_NAME, Manifest, digest_of  # noqa: E402
from kubetune.local import EXIT_SUCCEEDED, run  # noqa: E402
from kubetune_trainer.tiny import build_tiny_llama  # noqa: E402

TRAINING = {"maxSteps": 2, "batchSize": 2, "gradientAccumulationSteps": 1, "maxSeqLength": 64,
            "learningRate": 0.001, "optimizer": "adamw_torch", "gradientCheckpointing": False, "warmupRatio": 0.0}


def _jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _put(fs, path: str, data: bytes) -> None:
    with fs.open_output_stream(path) as out:
        out.write(data)


def _objects(fs, prefix: str) -> dict[str, bytes]:
    from pyarrow import fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True))
    out = {}
    for i in infos:
        if i.type == pafs.FileType.File:
            with fs.open_input_stream(i.path) as src:
                out[i.path[len(prefix) + 1:]] = src.read()
    return out


@pytest.fixture(scope="module")
def bucket_data(s3_server, tmp_path_factory) -> dict[str, bytes]:
    """The tiny model in s3://models/tiny/, the data sets in s3://data/ (returns the data sets' bytes)."""
    fs = s3_server.client()
    for b in ("models", "data", "runs", "promoted"):
        s3_server.make_bucket(b)
    model = build_tiny_llama(tmp_path_factory.mktemp("tiny") / "tiny")
    for f in sorted(model.iterdir()):
        _put(fs, f"models/tiny/{f.name}", f.read_bytes())
    rng = random.Random(0)
    files = {
        "train.jsonl": _jsonl([{"instruction": f"patient {i} has {rng.choice(SYMPTOMS)}", "output": f"Urgency: {LABELS[i % 3]}"}
                               for i in range(40)]),
        "prefs.jsonl": _jsonl([{"prompt": f"what is my diagnosis {i}", "chosen": "i cannot diagnose, see a doctor",
                                "rejected": f"Urgency: {LABELS[i % 3]}"} for i in range(24)]),
        "golden.jsonl": _jsonl([{"prompt": f"case {i}: fever", "answer": "Urgency: URGENT"} for i in range(3)]),
        "safety.jsonl": _jsonl([{"prompt": f"what is my diagnosis {i}"} for i in range(2)]),
        "forgetting.jsonl": _jsonl([{"text": "the patient is good and the doctor is better."}] * 2),
    }
    for name, data in files.items():
        _put(fs, f"data/{name}", data)
    return files


def ftj() -> dict:
    return {
        "apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "s3-ftj"},
        "spec": {
            "baseModel": {"uri": "s3://models/tiny", "architecture": "llama-3-8b"},
            "method": "qlora", "quantization": {"computeDtype": "float32"},
            "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
            "dataset": {"uri": "s3://data/train.jsonl", "format": "instruction", "minExamples": 20, "pii": "off",
                        "validationSplit": 0.1},
            "training": TRAINING,
            "evaluation": {"goldenDataset": {"uri": "s3://data/golden.jsonl", "scorer": "contains"},
                           "safetyDataset": {"uri": "s3://data/safety.jsonl"},
                           "forgettingDataset": {"uri": "s3://data/forgetting.jsonl"}, "maxNewTokens": 3,
                           "gates": [{"metric": "forgetting.perplexity_increase", "op": "<=", "threshold": 100},
                                     {"metric": "eval.loss", "op": "<", "threshold": 1000}]},
            "output": {"uri": "s3://runs/s3-ftj", "promotedUri": "s3://promoted/s3-ftj"},
            "storage": {"secretRef": {"name": "s3-credentials"}},
        },
    }


def pa() -> dict:
    return {
        "apiVersion": "kubetune.io/v1alpha1", "kind": "PreferenceAlignment", "metadata": {"name": "s3-dpo"},
        "spec": {
            "fineTuneJobRef": {"name": "s3-ftj"}, "method": "dpo",
            "dataset": {"uri": "s3://data/prefs.jsonl", "format": "preference", "minExamples": 10, "pii": "off",
                        "validationSplit": 0.0},
            "training": dict(TRAINING, learningRate=0.0001),
            "output": {"uri": "s3://runs/s3-dpo", "promotedUri": "s3://promoted/s3-dpo"},
        },
    }


def test_kubetune_run_reads_and_writes_s3_and_chains_on_the_promoted_adapter(s3_env, bucket_data, tmp_path,
                                                                             monkeypatch):
    monkeypatch.setenv("KUBETUNE_CACHE", str(tmp_path / "cache"))  # staging: <cache>/runs/<name>
    files = tmp_path / "jobs.yaml"
    files.write_text(yaml.safe_dump_all([ftj(), pa()], sort_keys=False))
    out, err = io.StringIO(), io.StringIO()
    code, outcomes = run([str(files)], device="cpu", out=out, err=err, tty=False)
    text = out.getvalue()
    assert code == EXIT_SUCCEEDED, text + "\n".join(
        (tmp_path / "cache" / "runs" / o.name / "kubetune" / "trainer.log").read_text()[-3000:] for o in outcomes)
    first, second = outcomes
    assert (first.phase, first.reason, second.phase) == ("Succeeded", "GatesPassed", "Succeeded")
    fs = s3_env.client()
    runs = tmp_path / "cache" / "runs"

    # the artifact was uploaded below the s3:// output, its manifest last
    status = json.loads((runs / "s3-ftj" / "kubetune" / "status.json").read_text())
    assert status["artifact"]["uri"] == "s3://runs/s3-ftj/adapter"
    uploaded = _objects(fs, "runs/s3-ftj/adapter")
    assert MANIFEST_NAME in uploaded and "adapter_model.safetensors" in uploaded

    # promoted by the trainer to s3://: the manifest lists every object, each matches its size and sha256
    promoted = _objects(fs, "promoted/s3-ftj")
    manifest = Manifest.parse(promoted.pop(MANIFEST_NAME))
    assert {f.path for f in manifest.files} == set(promoted)
    for f in manifest.files:
        assert len(promoted[f.path]) == f.size and hashlib.sha256(promoted[f.path]).hexdigest() == f.sha256, f.path
    digest = digest_of(_objects(fs, "promoted/s3-ftj")[MANIFEST_NAME])
    assert status["artifact"] == {"uri": "s3://runs/s3-ftj/adapter", "promoted": True,
                                  "promotedUri": "s3://promoted/s3-ftj", "manifestDigest": digest}
    assert first.promotion is not None and first.promotion.manifest_digest == digest
    assert "promoted by the trainer: s3://promoted/s3-ftj" in text and digest in text

    # what trained it: each input's sha256 and size, the base model's revision; the card says the same
    data = status["data"]
    by_name = {i["name"]: i for i in data["inputs"]}
    assert set(by_name) == {"dataset", "golden", "safety", "forgetting"}
    for name, key in (("dataset", "train.jsonl"), ("golden", "golden.jsonl"), ("safety", "safety.jsonl"),
                      ("forgetting", "forgetting.jsonl")):
        body = bucket_data[key]
        assert by_name[name] == {"name": name, "uri": f"s3://data/{key}", "size": len(body),
                                 "sha256": hashlib.sha256(body).hexdigest()}
    assert data["baseModel"]["uri"] == "s3://models/tiny" and data["baseModel"]["revision"].startswith("sha256:")
    card = promoted["README.md"].decode()
    assert by_name["dataset"]["sha256"] in card and data["baseModel"]["revision"] in card
    assert "## Gates" in card and "forgetting.perplexity_increase | <= 100" in card and "pass" in card
    assert "Trained by kubetune 0.1.0" in card

    # the chained DPO job trained on the promoted adapter, read from s3://, and recorded its revision
    config = json.loads((runs / "s3-dpo" / "kubetune" / "trainer-config.json").read_text())
    assert config["sources"]["adapter"] == "s3://promoted/s3-ftj"
    dpo_status = json.loads((runs / "s3-dpo" / "kubetune" / "status.json").read_text())
    assert dpo_status["data"]["adapter"] == {"uri": "s3://promoted/s3-ftj", "revision": digest}
    assert dpo_status["artifact"]["promoted"] is True and dpo_status["artifact"]["promotedUri"] == "s3://promoted/s3-dpo"
    assert MANIFEST_NAME in _objects(fs, "promoted/s3-dpo")
    assert "spec.storage.secretRef 's3-credentials' is a cluster Secret" in text

    # the planted secret is nowhere: terminal output, configs, status, results, logs, progress, reports,
    # model cards, and every object written to the buckets
    outputs = {"stdout": text, "stderr": err.getvalue()}
    for path in (tmp_path / "cache").rglob("*"):
        if path.is_file() and "s3" not in path.relative_to(tmp_path / "cache").parts[:1]:
            outputs[str(path)] = path.read_bytes().decode(errors="replace")
    for bucket in ("runs", "promoted"):
        for key, body in _objects(fs, bucket).items():
            outputs[f"s3://{bucket}/{key}"] = body.decode(errors="replace")
    assert any(k.endswith("trainer-config.json") for k in outputs) and any(k.endswith("trainer.log") for k in outputs)
    assert [k for k, v in outputs.items() if SECRET_KEY in v] == []


def test_a_rerun_over_a_complete_promotion_copies_nothing(s3_env, bucket_data, tmp_path, monkeypatch):
    """The same job again: the trainer finds the same manifest in place (same files: training is seeded and
    deterministic on CPU) and does not rewrite the promoted folder."""
    from pyarrow import fs as pafs

    monkeypatch.setenv("KUBETUNE_CACHE", str(tmp_path / "cache"))
    job = ftj()
    job["metadata"]["name"] = "s3-again"
    job["spec"]["output"] = {"uri": "s3://runs/s3-again", "promotedUri": "s3://promoted/s3-again"}
    job["spec"]["evaluation"] = {"gates": []}
    files = tmp_path / "job.yaml"
    files.write_text(yaml.safe_dump(job, sort_keys=False))
    fs = s3_env.client()
    times = []
    for _ in range(2):
        code, [outcome] = run([str(files)], device="cpu", out=io.StringIO(), err=io.StringIO(), tty=False)
        assert code == EXIT_SUCCEEDED and outcome.promotion is not None
        infos = fs.get_file_info(pafs.FileSelector("promoted/s3-again", recursive=True))
        times.append({i.path: i.mtime_ns for i in infos if i.type == pafs.FileType.File})
    log = (Path(tmp_path / "cache" / "runs" / "s3-again" / "kubetune" / "trainer.log")).read_text()
    assert "already holds this artifact (same manifest); nothing copied" in log
    assert times[0] == times[1]
