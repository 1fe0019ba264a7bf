"""The pure core imports no kopf, kubernetes or torch stack — not even lazily inside a function."""

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "operator" / "kubetune"
PURE = ["api", "planning", "data", "render", "evaluation", "derivation", "gates.py", "checkpoint_selection.py"]
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


def _absolute_imports(node: ast.AST) -> list[str]:
    """The modules an `import` / `from ... import` statement names (relative imports: none)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        return [node.module]
    return []


def test_pure_core_files_import_nothing_forbidden() -> None:
    files = _pure_files()
    assert len(files) > 10
    offenders = []
    for file in files:
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            names = _absolute_imports(node)
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


def test_the_product_wheel_carries_no_dev_cluster(tmp_path: Path) -> None:
    """The local control plane is the development package kubetune-devcluster (cluster/): the
    `kubetune` wheel, built from a copy of the sources, has none of it."""
    assert not (PKG / "devcluster").exists()
    src = tmp_path / "src"
    junk = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("operator", "trainer_image"):
        shutil.copytree(ROOT / name, src / name, ignore=junk)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True)
    [wheel] = (tmp_path / "dist").glob("kubetune-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "kubetune/cli/__init__.py" in names
    assert [n for n in names if "devcluster" in n or n.endswith("stages.yaml")] == []


def test_only_the_cli_imports_the_dev_package_and_lazily() -> None:
    """`kubetune dev` is the one way in, so the product imports without kubetune-devcluster."""
    importers = []
    for file in sorted(PKG.rglob("*.py")):
        tree = ast.parse(file.read_text(encoding="utf-8"))
        functions = [f for f in ast.walk(tree) if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)]
        in_function = {id(node) for f in functions for node in ast.walk(f)}
        for node in ast.walk(tree):
            names = _absolute_imports(node)
            if any(n.split(".")[0] == "kubetune_devcluster" or n.startswith("kubetune.devcluster") for n in names):
                importers.append((str(file.relative_to(PKG)), "lazy" if id(node) in in_function else "at import"))
    assert importers == [("cli/__init__.py", "lazy")]


def test_the_operator_path_loads_no_data_scanning_stack() -> None:
    """Presidio (and the spaCy stack it pulls) is the [data] extra: the CLI, manifest validation, the
    webhook and the reconciler import without it, so the operator image does not carry it."""
    scanning = ["presidio_analyzer", "presidio_anonymizer", "spacy", "thinc"]
    code = (
        "import sys\n"
        "import kubetune.cli, kubetune.cli.validate, kubetune.controller.webhook, kubetune.controller.handlers\n"
        "kubetune.cli.build_parser()\n"
        f"print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in {scanning!r})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# Imported by the package but installed by an extra (or the development package), never at import time.
_NOT_IN_THE_BASE_INSTALL = {
    "presidio_analyzer": "data", "spacy": "data", "phonenumbers": "data", "tldextract": "data",
    "kubetune_trainer": "trainer", "kubetune_devcluster": "dev",
}


def test_the_base_install_declares_every_module_the_package_imports() -> None:
    """The operator image installs pyproject.toml's base dependencies and nothing else: each
    third-party module `kubetune` imports comes from one of them, or from an extra and lazily."""
    import re
    import tomllib
    from importlib.metadata import packages_distributions

    def canonical(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    base = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    declared = {canonical(re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0]) for d in base}
    distributions = packages_distributions()
    undeclared, eager = [], []
    for file in sorted(PKG.rglob("*.py")):
        tree = ast.parse(file.read_text(encoding="utf-8"))
        in_function = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
                       for n in ast.walk(f)}
        for node in ast.walk(tree):
            for top in {n.split(".")[0] for n in _absolute_imports(node)} - set(sys.stdlib_module_names) - {"kubetune"}:
                where = f"{file.relative_to(PKG)}:{node.lineno}: {top}"
                if top in _NOT_IN_THE_BASE_INSTALL:
                    if id(node) not in in_function:
                        eager.append(where)
                elif not declared & {canonical(d) for d in distributions.get(top, [])}:
                    undeclared.append(where)
    assert undeclared == [] and eager == []
