"""A tiny random Llama with a locally trained BPE tokenizer, saved as a Hugging Face folder.

For tests and benchmarks: builds in about a second, no hub, real architecture (Llama attention,
MLP, RMSNorm, rotary), a ChatML chat template with ``{% generation %}`` markers.

    python -m kubetune_trainer.tiny OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]

_WORDS = ["patient", "reports", "chest", "pain", "fever", "cough", "headache", "rash", "dizziness", "nausea", "since", "yesterday", "for", "two", "days", "urgency", "emergency", "urgent", "routine", "please", "see", "a", "doctor", "call", "an", "ambulance", "rest", "fluids", "the", "a", "an", "of", "and", "is", "was", "with", "without", "my", "child", "mother", "father", "severe", "mild", "sudden", "weeks", "hours", "what", "should", "i", "do", "can", "you", "tell", "me", "diagnosis", "sorry", "cannot", "diagnose", "answer", "question", "explain", "why", "because", "when", "where", "how", "which", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "yes", "no", "maybe", "good", "bad", "better", "worse"]


def llama_config(arch: Any, **overrides: Any) -> Any:
    """A transformers LlamaConfig with a planner catalog entry's numbers (random-weight models for the
    planner's accuracy tests and GPU benchmark)."""
    import transformers

    from kubetune.planning.hfconfig import config_from_architecture

    values = config_from_architecture(arch)
    values.pop("model_type")  # LlamaConfig's own
    values.update(overrides)
    return transformers.LlamaConfig(**values)


def corpus(n: int = 400, seed: int = 0) -> list[str]:
    """Deterministic pseudo-sentences over a small vocabulary (for the tokenizer and for data)."""
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 14))) + "." for _ in range(n)]


def build_tiny_llama(out: str | Path, *, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                     intermediate: int = 128, vocab_size: int = 384, seed: int = 0) -> Path:
    """Write a tiny random LlamaForCausalLM + fast BPE tokenizer (with a chat template) to ``out``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([*corpus(), " ".join(_WORDS)], trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<pad>", unk_token=None, model_max_length=512)
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(out)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast), hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=512,
        bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = fast.pad_token_id
    model.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m kubetune_trainer.tiny OUT_DIR", file=sys.stderr)
        return 2
    print(build_tiny_llama(args[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
