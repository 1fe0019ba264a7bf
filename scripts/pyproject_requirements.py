"""Print the requirements of a pyproject.toml's project and of some of its extras, one per line.

    python3 scripts/pyproject_requirements.py pyproject.toml trainer > requirements.txt

The Dockerfiles install these before they copy the sources, so that layer (torch and the rest)
depends on pyproject.toml alone and a change to the code does not reinstall it. An extra that
names the project itself (``kubetune[data]``) is expanded. Standard library only: it runs on the
image's bare python3.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    name = project["name"].lower()
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    out: list[str] = list(project.get("dependencies", []))
    todo, seen = list(extras), set()
    while todo:
        extra = todo.pop(0)
        if extra in seen:
            continue
        if extra not in optional:
            raise SystemExit(f"{pyproject}: no extra {extra!r} (extras: {', '.join(sorted(optional))})")
        seen.add(extra)
        for req in optional[extra]:
            self_ref = re.fullmatch(rf"{re.escape(name)}\s*\[([^\]]+)\]", req.strip(), re.IGNORECASE)
            if self_ref:
                todo += [e.strip() for e in self_ref.group(1).split(",")]
            elif req not in out:
                out.append(req)
    return out


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit("usage: pyproject_requirements.py PYPROJECT [EXTRA...]")
    print("\n".join(requirements(Path(sys.argv[1]), sys.argv[2:])))
