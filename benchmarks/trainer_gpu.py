"""QLoRA SFT speed on one GPU: tokens/s, peak memory and MFU on Llama-architecture models with random
weights at 1B-8B scale (no hub), with and without packing. The baseline later speed work is
measured against.

    python benchmarks/trainer_gpu.py                         # llama-1b, llama-3b, llama-8b
    python benchmarks/trainer_gpu.py --sizes llama-8b --steps 20 --seq 2048

Per size: a random LlamaForCausalLM (Llama 3 shapes) is written once in bf16 to a temp folder,
loaded 4-bit (NF4, double quant, bf16 compute) by the trainer's own loader (kubetune_trainer.modeling),
with LoRA r16 on all linear layers, gradient checkpointing, batch 4, paged AdamW 8-bit, and trained
with TRL's SFTTrainer on random token sequences whose lengths are spread over [seq/8, seq] (like
real instruction data), once padded per batch and once packed into full seq-length rows.
tokens/s counts real (non-padding) tokens; MFU uses TRL's compute_flops_per_token (the usual
6·N + attention training FLOPs per token) against the GPU's dense bf16 peak. Writes
benchmarks/results/trainer_gpu.md. Exits 2 with a message when no CUDA GPU is visible.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))
sys.path.insert(0, str(REPO / "trainer_image"))
RESULTS = REPO / "benchmarks" / "results" / "trainer_gpu.md"

# Llama 3 shapes (vocab 128256, GQA 8 KV heads)
SIZES = {
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, tie_word_embeddings=True),
    "llama-3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                     num_key_value_heads=8, tie_word_embeddings=True),
    "llama-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=8, tie_word_embeddings=False),
}
VOCAB = 128256


def write_random_llama(name: str, folder: Path) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=VOCAB, max_position_embeddings=8192, rope_theta=500000.0, **SIZES[name])
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(folder, safe_serialization=True)
    del model
    torch.cuda.empty_cache()
    return folder


def rows(n: int, seq: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [{"input_ids": [rng.randrange(1000, VOCAB - 1) for _ in range(rng.randint(seq // 8, seq))]} for _ in range(n)]


def bench(folder: Path, *, packing: bool, steps: int, seq: int, batch: int, warmup: int) -> dict:
    import torch
    from datasets import Dataset
    from transformers import PreTrainedTokenizerFast, TrainerCallback
    from trl import SFTConfig, SFTTrainer
    from trl.trainer.utils import compute_flops_per_token, get_peak_flops

    from kubetune.api.spec import LoraConfig, Quantization
    from kubetune_trainer import modeling

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model = modeling.load_base(folder, method="qlora", quant=Quantization(), device=modeling.pick_device("cuda"),
                               gradient_checkpointing=True)
    model = modeling.add_adapter(model, LoraConfig(r=16, alpha=32, dropout=0.0))
    # a minimal tokenizer object: data is pre-tokenized, TRL only needs pad/eos ids
    from tokenizers import Tokenizer, models

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<pad>": 0, "<eos>": 1}, unk_token="<pad>")),
                                  pad_token="<pad>", eos_token="<eos>")
    n_rows = (steps + warmup) * batch * (4 if packing else 1)
    data = Dataset.from_list(rows(n_rows, seq))

    timings: dict[str, float] = {}

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **_):
            if state.global_step == warmup:
                torch.cuda.synchronize()
                timings["t0"] = time.perf_counter()
                timings["tokens0"] = state.num_input_tokens_seen

        def on_train_end(self, args, state, control, **_):
            torch.cuda.synchronize()
            timings["t1"] = time.perf_counter()
            timings["tokens1"] = state.num_input_tokens_seen

    args = SFTConfig(output_dir=str(folder / "out"), max_steps=steps + warmup, per_device_train_batch_size=batch,
                     learning_rate=2e-4, optim="paged_adamw_8bit", max_length=seq, packing=packing,
                     activation_checkpointing=True, activation_checkpointing_kwargs={"use_reentrant": False},
                     bf16=True, logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True,
                     include_num_input_tokens_seen="non_padding", dataset_num_proc=None)
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok, callbacks=[Timer()])
    trainer.train()
    seconds = timings["t1"] - timings["t0"]
    tokens = timings["tokens1"] - timings["tokens0"]
    tps = tokens / seconds
    peak_flops = get_peak_flops(torch.cuda.get_device_name(0), "bfloat16")
    flops_per_token = compute_flops_per_token(model.config, seq)
    result = {
        "packing": packing, "steps": steps, "seconds": round(seconds, 2), "tokens_per_second": round(tps, 1),
        "s_per_step": round(seconds / steps, 3), "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "mfu": round(flops_per_token * tps / peak_flops, 4) if peak_flops else None,
        "params": sum(p.numel() for p in model.parameters()),
    }
    del trainer, model
    torch.cuda.empty_cache()
    return result


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--steps", type=int, default=10, help="timed steps (after warmup)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args()
    try:
        import torch
    except ImportError:
        print("trainer_gpu: needs the [trainer] extra (torch)", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("trainer_gpu: no CUDA GPU visible; this benchmark measures QLoRA on a GPU (run it on one)",
              file=sys.stderr)
        return 2
    gpu = torch.cuda.get_device_name(0)
    results = []
    for name in a.sizes:
        with tempfile.TemporaryDirectory(prefix=f"kubetune-{name}-") as tmp:
            folder = write_random_llama(name, Path(tmp) / name)
            for packing in (False, True):
                r = {"model": name, **bench(folder, packing=packing, steps=a.steps, seq=a.seq, batch=a.batch,
                                            warmup=a.warmup)}
                print(json.dumps(r), flush=True)
                results.append(r)
    lines = [
        f"# QLoRA SFT on one GPU ({gpu})",
        "",
        f"`python benchmarks/trainer_gpu.py --steps {a.steps} --seq {a.seq} --batch {a.batch}` — random-weight "
        "Llama 3 shapes, NF4 + double quant, bf16 compute, LoRA r16 all-linear, gradient checkpointing, "
        "paged AdamW 8-bit; lengths spread over [seq/8, seq]. tokens/s = real tokens; MFU = TRL's "
        "training FLOPs per token × tokens/s / dense bf16 peak.",
        "",
        "| model | packing | tokens/s | s/step | peak memory | MFU |",
        "|---|---|---|---|---|---|",
        *[f"| {r['model']} | {'yes' if r['packing'] else 'no'} | {r['tokens_per_second']:,.0f} | {r['s_per_step']} | "
          f"{r['peak_memory_gib']} GiB | {r['mfu'] if r['mfu'] is not None else '?'} |" for r in results],
        "",
    ]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
