"""CRD generation: pydantic models ⇒ structural OpenAPI v3 schemas ⇒ CustomResourceDefinitions.

The YAML under crds/ is exactly `render_crd_yaml(kind)`; tests fail when it drifts.
"""

import copy
from typing import Any

import yaml

from kubetune.api.constants import CATEGORY, GROUP, PLURALS, SHORT_NAMES, VERSION
from kubetune.api.resources import SPEC_MODELS
from kubetune.api.status import JobStatus

_DROP_KEYS = {"title", "additionalProperties_false"}
# What the API server shows before the operator's first status write: generation 0 observed, so
# kstatus, Flux and Argo CD read a new CR as in progress, not as done (the server defaults a
# missing status when it reads the object).
STATUS_DEFAULT = {"observedGeneration": 0}


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    """Inline $refs, fold Optional[X] to X, and turn JSON Schema 2020-12 forms into the
    OpenAPI v3.0 forms the API server accepts (boolean exclusive bounds, enum instead of const)."""
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = copy.deepcopy(defs[node.pop("$ref").split("/")[-1]])
        node = {**target, **node}  # the property's own description/default win over the type's
    if "anyOf" in node:
        variants = [v for v in node.pop("anyOf") if v != {"type": "null"}]
        if len(variants) != 1:
            raise ValueError(f"unions are not structural: {variants}")
        inner = _resolve(variants[0], defs)
        node = {**inner, **{k: v for k, v in node.items() if k != "default" or v is not None}}
    if node.get("default", "missing") is None:
        del node["default"]
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "title" or key == "$defs":
            continue
        if key == "additionalProperties" and value is False:
            continue  # structural schemas prune unknown fields instead; `validate` rejects them
        if key == "exclusiveMinimum" and not isinstance(value, bool):
            out["minimum"], out["exclusiveMinimum"] = value, True
            continue
        if key == "exclusiveMaximum" and not isinstance(value, bool):
            out["maximum"], out["exclusiveMaximum"] = value, True
            continue
        if key == "const":
            out["enum"] = [value]
            continue
        if key in ("properties",):
            out[key] = {name: _resolve(sub, defs) for name, sub in value.items()}
            continue
        out[key] = _resolve(value, defs)
    if "enum" in out and "type" not in out:
        sample = out["enum"][0]
        out["type"] = "integer" if isinstance(sample, int) else "number" if isinstance(sample, float) else "string"
    if out.get("x-kubernetes-preserve-unknown-fields"):
        out.pop("additionalProperties", None)
        out["type"] = "object"
    if out.get("type") == "object" and out.get("additionalProperties") == {}:
        out.pop("additionalProperties")
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def openapi_schema(model: type[Any]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    resolved: dict[str, Any] = _resolve(raw, raw.get("$defs", {}))
    return resolved


def _printer_columns(kind: str) -> list[dict[str, Any]]:
    columns: list[dict[str, Any]] = [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase", "description": "Lifecycle phase."},
        {"name": "Method", "type": "string", "jsonPath": ".spec.method", "description": "Tuning method."},
        {"name": "Model", "type": "string", "jsonPath": ".spec.baseModel.uri", "description": "Base model."},
    ]
    if kind == "PreferenceAlignment":
        columns.append({"name": "After", "type": "string", "jsonPath": ".spec.fineTuneJobRef.name",
                        "description": "The FineTuneJob this alignment starts from."})
    columns += [
        {"name": "Progress", "type": "string", "jsonPath": ".status.progress.summary", "description": "Training progress."},
        {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
         "description": "True when Succeeded with every gate passed."},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        {"name": "Reason", "type": "string", "jsonPath": ".status.reason", "priority": 1},
        {"name": "Message", "type": "string", "jsonPath": ".status.message", "priority": 1},
    ]
    return columns


def crd_schema(kind: str) -> dict[str, Any]:
    """The openAPIV3Schema of one kind."""
    spec_model = SPEC_MODELS[kind]
    return {
        "type": "object",
        "description": (spec_model.__doc__ or "").strip(),
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "kubetune.io/v1alpha1"},
            "kind": {"type": "string", "description": kind},
            "metadata": {"type": "object"},
            "spec": openapi_schema(spec_model),
            "status": {**openapi_schema(JobStatus), "default": STATUS_DEFAULT},
        },
    }


def build_crd(kind: str) -> dict[str, Any]:
    plural = PLURALS[kind]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "kubetune"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": SHORT_NAMES[kind],
                "categories": [CATEGORY],
            },
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "additionalPrinterColumns": _printer_columns(kind),
                "schema": {"openAPIV3Schema": crd_schema(kind)},
            }],
        },
    }


class _Dumper(yaml.SafeDumper):
    pass


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", data)


_Dumper.add_representer(str, _str_presenter)


def render_crd_yaml(kind: str) -> str:
    header = "# Generated by `kubetune crds` from kubetune.api; do not edit by hand.\n"
    return header + yaml.dump(build_crd(kind), Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True)


def crd_filename(kind: str) -> str:
    return f"{PLURALS[kind]}.{GROUP}.yaml"
