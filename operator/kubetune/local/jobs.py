"""The jobs in the manifests given to `kubetune run`: read, made absolute and validated, then put in
the order they must run in.

`file://rel/path` is relative to the manifest's folder; `secret_env_name` is the environment
variable a `secretKeyRef` is read from locally.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune.api.constants import FINETUNEJOB, PREFERENCEALIGNMENT
from kubetune.api.problems import Problem
from kubetune.api.resources import AnyJob, FineTuneJob, parse_resource
from kubetune.api.spec import FineTuneJobSpec
from kubetune.api.validate import defaulted, is_kubetune, validate_object
from kubetune.manifests import Document, ManifestError, load_documents

# Where URIs live in a spec (dotted path ⇒ the URI string).
URI_FIELDS = (
    ("baseModel", "uri"), ("adapter", "uri"), ("dataset", "uri"), ("dataset", "replay", "uri"),
    ("evaluation", "goldenDataset", "uri"), ("evaluation", "safetyDataset", "uri"),
    ("evaluation", "forgettingDataset", "uri"), ("output", "uri"), ("output", "promotedUri"),
)


@dataclass
class LocalJob:
    doc: Document
    obj: dict[str, Any]  # the manifest with file:// URIs made absolute
    name: str
    kind: str
    job: AnyJob | None = None
    problems: list[Problem] = field(default_factory=list)


def absolute_file_uri(uri: str, folder: Path) -> str:
    """file://rel/path ⇒ file:///<folder>/rel/path; other URIs unchanged."""
    if not uri.startswith("file://"):
        return uri
    rest = uri[len("file://"):]
    if rest.startswith("/"):
        return uri
    return "file://" + str((folder / rest).resolve())


def absolute_file_uris(obj: Any, folder: Path) -> Any:
    """A manifest (or any part of one) with every relative file:// URI made absolute against `folder`."""
    if isinstance(obj, dict):
        return {k: absolute_file_uris(v, folder) for k, v in obj.items()}
    if isinstance(obj, list):
        return [absolute_file_uris(v, folder) for v in obj]
    return absolute_file_uri(obj, folder) if isinstance(obj, str) else obj


def local_path(uri: str) -> str:
    """A trainer source: file:// ⇒ a plain path; hf://, s3://, pvc:// stay URIs."""
    return uri[len("file://"):] if uri.startswith("file://") else uri


def file_uri(path: Path) -> str:
    """An absolute local path as the file:// URI a spec would name it by."""
    return "file://" + str(path)


def _absolutize(obj: dict[str, Any], folder: Path) -> dict[str, Any]:
    obj = json.loads(json.dumps(obj))
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return obj
    for path in URI_FIELDS:
        node: Any = spec
        for key in path[:-1]:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(path[-1]), str):
            node[path[-1]] = absolute_file_uri(node[path[-1]], folder)
    return obj


def secret_env_name(name: str, key: str) -> str:
    return "KUBETUNE_SECRET_" + re.sub(r"[^A-Za-z0-9]", "_", f"{name}_{key}").upper()


def load_jobs(files: list[str]) -> tuple[list[LocalJob], list[str]]:
    """Kubetune objects from the files, validated for a local run (errors as lines)."""
    errors: list[str] = []
    jobs: list[LocalJob] = []
    for path in files:
        try:
            docs = load_documents(path)
        except ManifestError as exc:
            errors.append(str(exc))
            continue
        for doc in docs:
            if not is_kubetune(doc.obj):
                continue
            obj = _absolutize(doc.obj, Path(path).resolve().parent)
            meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
            jobs.append(LocalJob(doc, obj, str((meta or {}).get("name", "?")), str(obj.get("kind", "?"))))
    specs: dict[str, FineTuneJobSpec] = {}
    for j in jobs:
        if j.kind == FINETUNEJOB:
            try:
                parsed = parse_resource(defaulted(j.obj))
                if isinstance(parsed, FineTuneJob):
                    specs[j.name] = parsed.spec
            except Exception:  # reported by validate_object below
                pass
    for j in jobs:
        j.problems = validate_object(j.obj, local=True, lookup=specs.get)
        if not any(p.severity == "error" for p in j.problems):
            j.job = parse_resource(defaulted(j.obj))
    return jobs, errors


def order(jobs: list[LocalJob]) -> list[LocalJob]:
    """FineTuneJobs first (in file order), then PreferenceAlignments."""
    return [j for j in jobs if j.kind == FINETUNEJOB] + [j for j in jobs if j.kind == PREFERENCEALIGNMENT]
