"""The pure core imports no kopf, kubernetes or torch stack — not even lazily inside a function."""

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "operator" / "kubetune"
PURE = ["api", "planning", "data", "render", "evaluation", "status", "gates.py"]
FORBIDDEN = {"kopf", "kubernetes", "torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate", "datasets"}


def _pure_files() -> list[Path]:
    files: list[Path] = []
    for name in PURE:
        path = PKG / name
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files += sorted(path.rglob("*.py"))
    return files


def test_pure_core_files_import_nothing_forbidden() -> None:
    files = _pure_files()
    assert len(files) > 10
    offenders = []
    for file in files:
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [f"{file.relative_to(PKG)}:{node.lineno}: {n}" for n in names if n.split(".")[0] in FORBIDDEN]
    assert offenders == []


def test_importing_the_pure_core_loads_no_forbidden_module() -> None:
    modules = [".".join(f.relative_to(PKG.parent).with_suffix("").parts) for f in _pure_files()]
    modules = [m.removesuffix(".__init__") for m in modules]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(FORBIDDEN)!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_the_local_executor_loads_no_forbidden_module() -> None:
    # `kubetune run` is part of the base install: the trainer (torch) is its subprocess, no cluster is needed
    code = f"import sys, kubetune.local; print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(FORBIDDEN)!r})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_cli_help_is_fast_and_torch_free() -> None:
    code = "import sys; from kubetune.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
