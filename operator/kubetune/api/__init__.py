"""The kubetune.io/v1alpha1 API: pydantic models are the single source of truth.

The CRD YAML under crds/ is generated from these models (`kubetune crds`), offline validation
(`kubetune validate`) and the admission webhook evaluate the same schema and CEL rules, and the
operator and the trainer read the same models. Pure: no kopf, kubernetes or torch imports.
"""

from kubetune.api.constants import API_VERSION, GROUP, VERSION
from kubetune.api.resources import FineTuneJob, PreferenceAlignment
from kubetune.api.spec import FineTuneJobSpec, PreferenceAlignmentSpec
from kubetune.api.status import Condition, JobStatus

__all__ = [
    "API_VERSION",
    "GROUP",
    "VERSION",
    "Condition",
    "FineTuneJob",
    "FineTuneJobSpec",
    "JobStatus",
    "PreferenceAlignment",
    "PreferenceAlignmentSpec",
]
