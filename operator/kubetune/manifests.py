"""Reading manifest files: YAML (one or many documents) into objects, with clear errors."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


@dataclass
class Document:
    file: str
    index: int  # position in a multi-document file, from 0
    obj: Any

    @property
    def label(self) -> str:
        if isinstance(self.obj, dict):
            meta = self.obj.get("metadata") if isinstance(self.obj.get("metadata"), dict) else {}
            return f"{self.obj.get('kind', '?')}/{(meta or {}).get('name', '?')}"
        return f"document {self.index + 1}"


class ManifestError(Exception):
    """A file that cannot be read as YAML; the message is for users."""


def load_documents(path: str) -> list[Document]:
    p = Path(path)
    if not p.exists():
        raise ManifestError(f"{path}: no such file")
    if p.is_dir():
        raise ManifestError(f"{path}: is a directory; pass the manifest files (-f a.yaml -f b.yaml)")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ManifestError(f"{path}: not a UTF-8 text file") from None
    try:
        objs = [o for o in yaml.safe_load_all(text) if o is not None]
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ManifestError(f"{path}: invalid YAML{where}: {problem}") from None
    if not objs:
        raise ManifestError(f"{path}: empty file (no YAML documents)")
    return [Document(path, i, o) for i, o in enumerate(objs)]
