"""The trainer config (kubetune.io/trainer-config/v1) carries the typed, resolved spec; its wire form
is the one the renderer wrote when `spec` was a plain dict."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from kubetune.api.method_defaults import resolve
from kubetune.api.resources import FineTuneJob, PreferenceAlignment, parse_resource
from kubetune.api.spec import Checkpoint, FineTuneJobSpec, PreferenceAlignmentSpec
from kubetune.api.trainer_contract import JobIdentity, Sources, TrainerConfig
from kubetune.render.trainer_config import build_trainer_config

TESTDATA = Path(__file__).parent / "testdata"
EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
SOURCES = Sources(model="/models/base", dataset="/data/train.jsonl", output="/output")


def example(name: str) -> FineTuneJob | PreferenceAlignment:
    return parse_resource(yaml.safe_load((EXAMPLES / name).read_text()))


@pytest.mark.parametrize(("name", "spec_type"), [("trainer-config-v1-sft.json", FineTuneJobSpec),
                                                 ("trainer-config-v1-dpo.json", PreferenceAlignmentSpec)])
def test_a_config_rendered_before_the_typed_spec_round_trips(name: str, spec_type: type) -> None:
    """These files were rendered when `spec` was a dict (70B QLoRA SFT; DPO chained on it)."""
    text = (TESTDATA / name).read_text()
    config = TrainerConfig.model_validate_json(text)
    assert type(config.spec) is spec_type
    assert config.to_json() + "\n" == text


def test_the_renderer_puts_the_resolved_spec_in_the_config() -> None:
    ftj = example("llama3-70b-qlora-triage.yaml")
    assert isinstance(ftj, FineTuneJob)
    config = build_trainer_config(ftj, sources=SOURCES)
    assert config.spec == resolve(ftj.spec)
    assert TrainerConfig.model_validate_json(config.to_json()) == config

    pa = example("triage-dpo.yaml")
    dpo = build_trainer_config(pa, sources=SOURCES, referenced=ftj.spec)
    assert isinstance(dpo.spec, PreferenceAlignmentSpec)
    assert dpo.spec.tuning == "qlora" and dpo.spec.quantization == ftj.spec.quantization
    # inherited parts are copies: changing the config's spec leaves the FineTuneJob's alone
    assert dpo.spec.quantization is not ftj.spec.quantization and dpo.spec.lora is not ftj.spec.lora
    assert TrainerConfig.model_validate_json(dpo.to_json()) == dpo


def test_job_kind_picks_the_spec_model_and_errors_name_its_fields() -> None:
    wire = json.loads((TESTDATA / "trainer-config-v1-sft.json").read_text())
    wire["spec"]["training"]["maxSteps"] = 0
    with pytest.raises(ValidationError) as e:
        TrainerConfig.model_validate(wire)
    assert [err["loc"] for err in e.value.errors()] == [("spec", "training", "maxSteps")]

    wire = json.loads((TESTDATA / "trainer-config-v1-sft.json").read_text())
    wire["job"]["kind"] = "PreferenceAlignment"  # a FineTuneJob's spec is no PreferenceAlignment's
    with pytest.raises(ValidationError) as e:
        TrainerConfig.model_validate(wire)
    assert ("spec", "method") in [err["loc"] for err in e.value.errors()]


def test_a_typed_spec_of_the_other_kind_is_refused() -> None:
    spec = FineTuneJobSpec.model_validate(json.loads((TESTDATA / "trainer-config-v1-sft.json").read_text())["spec"])
    TrainerConfig(job=JobIdentity(kind="FineTuneJob", name="a"), task="sft", spec=spec, sources=SOURCES)
    with pytest.raises(ValidationError, match=r"spec is a FineTuneJobSpec, but job\.kind is PreferenceAlignment"):
        TrainerConfig(job=JobIdentity(kind="PreferenceAlignment", name="a"), task="dpo", spec=spec, sources=SOURCES)


def test_the_spec_is_edited_as_a_model() -> None:
    config = TrainerConfig.model_validate_json((TESTDATA / "trainer-config-v1-sft.json").read_text())
    config.spec.checkpoint = Checkpoint(every_steps=2, keep_last=3)
    config.spec.training.max_steps = 8
    wire = json.loads(config.to_json())["spec"]
    assert wire["checkpoint"] == {"everySteps": 2, "keepLast": 3} and wire["training"]["maxSteps"] == 8
