"""The two custom resources: apiVersion, kind, metadata, spec, status."""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from kubetune.api.spec import FineTuneJobSpec, PreferenceAlignmentSpec
from kubetune.api.status import JobStatus


class ObjectMeta(BaseModel):
    """The parts of metadata kubetune reads; the rest is kept as is."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class FineTuneJob(BaseModel):
    """Supervised fine-tuning (QLoRA, LoRA or full) of an LLM, with data checks and evaluation gates."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    api_version: Literal["kubetune.io/v1alpha1"] = Field(default="kubetune.io/v1alpha1", alias="apiVersion")
    kind: Literal["FineTuneJob"] = "FineTuneJob"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: FineTuneJobSpec
    status: JobStatus | None = None


class PreferenceAlignment(BaseModel):
    """Preference alignment (DPO) of an LLM, usually on a FineTuneJob's adapter."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid")

    api_version: Literal["kubetune.io/v1alpha1"] = Field(default="kubetune.io/v1alpha1", alias="apiVersion")
    kind: Literal["PreferenceAlignment"] = "PreferenceAlignment"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: PreferenceAlignmentSpec
    status: JobStatus | None = None


AnyJob = FineTuneJob | PreferenceAlignment
SPEC_MODELS: dict[str, type[FineTuneJobSpec] | type[PreferenceAlignmentSpec]] = {
    "FineTuneJob": FineTuneJobSpec,
    "PreferenceAlignment": PreferenceAlignmentSpec,
}
RESOURCE_MODELS: dict[str, type[FineTuneJob] | type[PreferenceAlignment]] = {
    "FineTuneJob": FineTuneJob,
    "PreferenceAlignment": PreferenceAlignment,
}


def parse_resource(obj: dict[str, Any]) -> AnyJob:
    """Typed view of a manifest or a live object (must already be valid)."""
    return RESOURCE_MODELS[obj["kind"]].model_validate(obj)
