"""The CRDs under crds/ are exactly what the API models generate, and they are well-formed."""

from pathlib import Path

import pytest
import yaml

from kubetune.api.constants import KINDS
from kubetune.api.crd import build_crd, crd_filename, render_crd_yaml
from kubetune.cli import main

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("kind", KINDS)
def test_committed_crds_match_the_models(kind: str) -> None:
    committed = (ROOT / "crds" / crd_filename(kind)).read_text(encoding="utf-8")
    assert committed == render_crd_yaml(kind), "crds/ drifted: run `kubetune crds --out crds`"


def test_kubetune_crds_regenerates_byte_for_byte(tmp_path: Path) -> None:
    assert main(["crds", "--out", str(tmp_path)]) == 0
    for kind in KINDS:
        assert (tmp_path / crd_filename(kind)).read_bytes() == (ROOT / "crds" / crd_filename(kind)).read_bytes()


def _walk(schema: dict, path: str):
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if "items" in schema:
        yield from _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("kind", KINDS)
def test_schema_is_structural_and_documented(kind: str) -> None:
    schema = build_crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema, ""):
        assert "$ref" not in node and "anyOf" not in node and "title" not in node, path
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), f"{path} has no type"
        if node.get("additionalProperties") is False:
            pytest.fail(f"{path}: additionalProperties false is not structural")
        if path.startswith(".spec") and not path.endswith("[]") and not path.endswith("{}"):
            assert node.get("description"), f"{path} has no description (kubectl explain)"
    for name in ("exclusiveMinimum", "exclusiveMaximum"):
        for path, node in _walk(schema, ""):
            if name in node:
                assert isinstance(node[name], bool), f"{path}.{name} must be boolean in OpenAPI v3.0"


def test_names_columns_and_subresources() -> None:
    ftj = build_crd("FineTuneJob")["spec"]
    assert ftj["names"]["shortNames"] == ["ftj"] and ftj["names"]["categories"] == ["kubetune"]
    assert build_crd("PreferenceAlignment")["spec"]["names"]["shortNames"] == ["pa"]
    version = ftj["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert {"Phase", "Method", "Model", "Progress", "Ready", "Age"} <= set(columns)
    assert columns["Ready"]["jsonPath"] == '.status.conditions[?(@.type=="Ready")].status'
    assert columns["Message"]["priority"] == 1


def test_explain_text_for_lora_rank() -> None:
    spec = build_crd("FineTuneJob")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    r = spec["properties"]["lora"]["properties"]["r"]
    assert r["minimum"] == 1 and r["default"] == 16 and "Rank" in r["description"]


def test_conditions_are_a_map_keyed_by_type() -> None:
    status = build_crd("FineTuneJob")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    conditions = status["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]


def test_optional_blocks_are_not_defaulted_into_existence() -> None:
    """quantization/lora must not get `default: {}` or every lora job would break the CEL rule."""
    spec = build_crd("FineTuneJob")["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert "default" not in spec["properties"]["quantization"]
    assert "default" not in spec["properties"]["lora"]
    assert spec["properties"]["training"]["default"] == {}


def test_crd_yaml_parses() -> None:
    for kind in KINDS:
        assert yaml.safe_load(render_crd_yaml(kind))["kind"] == "CustomResourceDefinition"
