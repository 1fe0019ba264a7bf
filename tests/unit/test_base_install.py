"""`pip install kubetune` (the operator image's install) has what the product imports.

Every module-level import of a third-party package in operator/kubetune must come from a base
dependency in pyproject.toml: the dev and trainer extras install more, so a missing base dependency
hides in tests and surfaces only in the operator image (jsonschema did: the operator pod crashed at
start-up). Imports inside functions are the optional extras' (presidio, torch), guarded there.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "operator" / "kubetune"


def _base_dependencies() -> set[str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0].lower().replace("_", "-") for d in deps}


def _module_level_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in tree.body:  # module level only, incl. `if TYPE_CHECKING:` blocks' siblings
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_every_module_level_import_is_a_base_dependency() -> None:
    base = _base_dependencies()
    dists = metadata.packages_distributions()
    missing: dict[str, set[str]] = {}
    for path in PKG.rglob("*.py"):
        for name in _module_level_imports(path):
            if name in sys.stdlib_module_names or name in ("kubetune", "__future__"):
                continue
            providers = {d.lower().replace("_", "-") for d in dists.get(name, [name])}
            if not providers & base:
                missing.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    assert not missing, f"imported at module level but not a base dependency in pyproject.toml: {missing}"
