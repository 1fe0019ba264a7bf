"""Trainer overhead: the kubetune trainer vs a bare TRL script, same model, data, hyperparameters
and steps, on CPU, run side by side (alternating), several runs; prints the median wall-time ratio
(goal ≤ 1.05) and writes benchmarks/results/trainer_overhead.md.

    python benchmarks/trainer_overhead.py                       # SmolLM2-135M QLoRA, 10 steps, 3 pairs
    python benchmarks/trainer_overhead.py --model tiny --steps 30 --runs 5

Both sides are fresh processes doing the whole job: load the model 4-bit, train, save the adapter.
The kubetune side also runs its data preflight (PII off), checkpoint completion markers, the
progress channel (progress.json, log line) and writes the model card and result. Two ratios are
reported: whole process (what a user waits for) and the training loop alone (train_runtime).
A third variant, "plain", trains the same tokenized batches with transformers' Trainer and the
plain causal-LM loss, to price TRL's loss path (entropy and token-accuracy metrics).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "quickstart" / "data" / "train.jsonl"
RESULTS = REPO / "benchmarks" / "results" / "trainer_overhead.md"


def manifest(model: str, steps: int, seq: int, out: Path) -> dict:
    return {
        "apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "overhead"},
        "spec": {
            "baseModel": {"uri": f"file://{model}"}, "method": "qlora",
            "quantization": {"bits": 4, "type": "nf4", "doubleQuant": True, "computeDtype": "float32"},
            "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
            "dataset": {"uri": f"file://{DATA}", "format": "instruction", "minExamples": 10, "pii": "off",
                        "validationSplit": 0.0},
            "training": {"maxSteps": steps, "batchSize": 4, "gradientAccumulationSteps": 1, "maxSeqLength": seq,
                         "learningRate": 5e-4, "optimizer": "adamw_torch", "warmupRatio": 0.0,
                         "gradientCheckpointing": False, "lrScheduler": "cosine"},
            "output": {"uri": f"file://{out}"}, "checkpoint": {"everySteps": 1000, "keepLast": 1},
        },
    }


def bare(model: str, steps: int, seq: int, out: str, plain: bool) -> None:
    """The bare TRL script (what a user would write by hand), with the same choices."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, Trainer
    from trl import SFTConfig, SFTTrainer

    t0 = time.monotonic()
    torch.manual_seed(42)
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": r["instruction"]}],
                             "completion": [{"role": "assistant", "content": r["output"]}]} for r in rows])
    tok = AutoTokenizer.from_pretrained(model)
    q = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                           bnb_4bit_compute_dtype=torch.float32)
    m = AutoModelForCausalLM.from_pretrained(model, quantization_config=q, device_map={"": "cpu"}, dtype=torch.float32)
    m = prepare_model_for_kbit_training(m, use_gradient_checkpointing=False)
    m = get_peft_model(m, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                                     task_type="CAUSAL_LM"))
    args = SFTConfig(output_dir=out, max_steps=steps, per_device_train_batch_size=4, learning_rate=5e-4,
                     lr_scheduler_type="cosine", optim="adamw_torch", max_length=seq, logging_steps=1,
                     gradient_checkpointing=False, use_cpu=True, bf16=False, report_to="none",
                     save_strategy="no", seed=42, disable_tqdm=True)
    trainer = SFTTrainer(model=m, args=args, train_dataset=ds, processing_class=tok)
    for p in m.parameters():  # TRL casts QLoRA adapters to bf16; fp32 on CPU like kubetune
        if p.requires_grad:
            p.data = p.data.float()
    if plain:
        trainer = Trainer(model=m, args=args, train_dataset=trainer.train_dataset,
                          data_collator=trainer.data_collator)
    out_metrics = trainer.train().metrics
    m.save_pretrained(out + "/adapter")
    tok.save_pretrained(out + "/adapter")
    print(json.dumps({"train_runtime": out_metrics["train_runtime"], "wall": time.monotonic() - t0}))


def run_kubetune(model: str, steps: int, seq: int, work: Path, env: dict) -> tuple[float, float]:
    cmd, result_path = kubetune_cmd(model, steps, seq, work)
    t0 = time.monotonic()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.monotonic() - t0
    return wall, json.loads(result_path.read_text())["metrics"]["train.seconds"]


def kubetune_cmd(model: str, steps: int, seq: int, work: Path) -> tuple[list[str], Path]:
    from kubetune.api.resources import parse_resource
    from kubetune.api.trainer_contract import ReportChannel, Sources
    from kubetune.render.trainer_config import build_trainer_config

    out = work / "kubetune"
    config = build_trainer_config(parse_resource(manifest(model, steps, seq, out)), sources=Sources(
        model=model, dataset=str(DATA), output=str(out)), report=ReportChannel(), device="cpu")
    path = work / "config.json"
    path.write_text(config.to_json())
    return [sys.executable, "-m", "kubetune_trainer", "--config", str(path)], out / "kubetune" / "result.json"


def bare_cmd(model: str, steps: int, seq: int, work: Path, plain: bool) -> list[str]:
    return [sys.executable, __file__, "--bare", "--plain" if plain else "--trl", "--model-path", model,
            "--steps", str(steps), "--seq", str(seq), "--out", str(work / ("plain" if plain else "bare"))]


def run_bare(model: str, steps: int, seq: int, work: Path, env: dict, plain: bool) -> tuple[float, float]:
    t0 = time.monotonic()
    proc = subprocess.run(bare_cmd(model, steps, seq, work, plain), env=env, check=True, capture_output=True, text=True)
    wall = time.monotonic() - t0
    return wall, json.loads(proc.stdout.strip().splitlines()[-1])["train_runtime"]


def run_pair_concurrently(model: str, steps: int, seq: int, work: Path, env: dict) -> dict[str, float]:
    """Both at once, so both see the same machine load (a shared CI box drifts minute to minute)."""
    k_cmd, k_result = kubetune_cmd(model, steps, seq, work)
    t0 = time.monotonic()
    k = subprocess.Popen(k_cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    b = subprocess.Popen(bare_cmd(model, steps, seq, work, False), env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True)
    walls: dict[str, float] = {}
    b_out = ""
    while len(walls) < 2:
        if "kubetune_wall" not in walls and k.poll() is not None:
            walls["kubetune_wall"] = time.monotonic() - t0
        if "bare_wall" not in walls and b.poll() is not None:
            walls["bare_wall"] = time.monotonic() - t0
            b_out = b.stdout.read() if b.stdout else ""
        time.sleep(0.05)
    if k.returncode or b.returncode:
        raise RuntimeError(f"a side failed: kubetune {k.returncode}, bare {b.returncode}")
    return {**walls, "kubetune_train": json.loads(k_result.read_text())["metrics"]["train.seconds"],
            "bare_train": json.loads(b_out.strip().splitlines()[-1])["train_runtime"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-plain", action="store_true", help="skip the plain causal-LM loss variant")
    p.add_argument("--concurrent", action="store_true",
                   help="run each kubetune/bare pair at the same time (same load on a shared machine); implies --no-plain")
    p.add_argument("--bare", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--trl", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model-path", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.bare:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
        bare(a.model_path, a.steps, a.seq, a.out, a.plain)
        return 0

    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "KUBETUNE_TORCH_THREADS": str(a.threads),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("KUBETUNE_FAULT_INJECT", None)
    with tempfile.TemporaryDirectory(prefix="kubetune-overhead-") as tmp:
        if a.model == "smollm2":
            from kubetune_trainer.smollm2 import prepare_smollm2

            model = str(prepare_smollm2())
        else:
            from kubetune_trainer.tiny import build_tiny_llama

            model = str(build_tiny_llama(Path(tmp) / "tiny"))
        rows: list[dict[str, float]] = []
        if a.concurrent:
            a.no_plain = True
        for i in range(a.runs):
            if a.concurrent:
                work = Path(tmp) / f"run{i}"
                work.mkdir()
                rows.append(run_pair_concurrently(model, a.steps, a.seq, work, env))
                print(f"run {i + 1}/{a.runs}: " + ", ".join(f"{k} {v:.1f}s" for k, v in sorted(rows[-1].items())),
                      flush=True)
                continue
            order = ["kubetune", "bare"] if i % 2 == 0 else ["bare", "kubetune"]
            if not a.no_plain:
                order.append("plain")
            row: dict[str, float] = {}
            for name in order:
                work = Path(tmp) / f"run{i}-{name}"
                work.mkdir()
                if name == "kubetune":
                    row["kubetune_wall"], row["kubetune_train"] = run_kubetune(model, a.steps, a.seq, work, env)
                else:
                    w, t = run_bare(model, a.steps, a.seq, work, env, plain=name == "plain")
                    row[f"{name}_wall"], row[f"{name}_train"] = w, t
            rows.append(row)
            print(f"run {i + 1}/{a.runs}: " + ", ".join(f"{k} {v:.1f}s" for k, v in sorted(row.items())), flush=True)

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rows)

    wall_ratio = statistics.median(r["kubetune_wall"] / r["bare_wall"] for r in rows)
    train_ratio = statistics.median(r["kubetune_train"] / r["bare_train"] for r in rows)
    lines = [
        "# Trainer overhead: kubetune trainer vs a bare TRL script (CPU)",
        "",
        f"`python benchmarks/trainer_overhead.py --model {a.model} --steps {a.steps} --seq {a.seq} --runs {a.runs}"
        + (" --concurrent" if a.concurrent else "") +
        f"` — QLoRA (NF4, double quant) r16 all-linear, batch 4, {a.threads} threads, fresh processes, "
        + ("each pair run at the same time" if a.concurrent else "alternating order")
        + ". Machine: shared 2-core CPU (other jobs running), so look at the ratios more than the seconds. "
        "The kubetune side also runs the data preflight, writes progress.json, a final full checkpoint "
        "(optimizer state, for resume), the model card and result.json; the bare side saves only the adapter.",
        "",
        "| | kubetune | bare TRL | ratio (median of per-run ratios) |",
        "|---|---|---|---|",
        f"| whole process (load, train, save) | {med('kubetune_wall'):.1f} s | {med('bare_wall'):.1f} s | **{wall_ratio:.3f}** |",
        f"| training loop (train_runtime) | {med('kubetune_train'):.1f} s | {med('bare_train'):.1f} s | **{train_ratio:.3f}** |",
        f"| s/step (training loop) | {med('kubetune_train') / a.steps:.2f} | {med('bare_train') / a.steps:.2f} | |",
    ]
    if not a.no_plain:
        plain_ratio = statistics.median(r["bare_train"] / r["plain_train"] for r in rows)
        lines += [
            "",
            "TRL's SFT loss path (fused LM head computing log-probs, entropy and token accuracy) vs the plain "
            "causal-LM loss (transformers `Trainer`, same tokenized batches and collator):",
            "",
            "| | TRL SFTTrainer | plain causal-LM loss | ratio |",
            "|---|---|---|---|",
            f"| training loop | {med('bare_train'):.1f} s | {med('plain_train'):.1f} s | {plain_ratio:.3f} |",
        ]
    lines += ["", "Per run (seconds):", "", "```", *[json.dumps({k: round(v, 2) for k, v in sorted(r.items())}) for r in rows], "```", ""]
    text = "\n".join(lines)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
