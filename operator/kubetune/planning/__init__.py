"""Memory planner: will a fine-tuning job fit on its GPUs — decided before any GPU is held.

Pure (no torch, kopf or kubernetes imports), well under a millisecond per plan::

    from kubetune.planning import PlanRequest, parse_quantity, plan
    p = plan(PlanRequest(model="hf://meta-llama/Meta-Llama-3-70B-Instruct", method="full",
                         gpu_memory_bytes=parse_quantity("80Gi")))
    p.fits, p.summary(), p.to_dict()

See docs/memory-planner.md for the model and its constants.
"""

from kubetune.planning.catalog import CATALOG, catalog_names, lookup, param_count
from kubetune.planning.hfconfig import architecture_from_config, read_config_dir
from kubetune.planning.memory import Estimate, estimate
from kubetune.planning.planner import plan, resolve_architecture
from kubetune.planning.quantity import format_bytes, parse_quantity
from kubetune.planning.suggest import suggest
from kubetune.planning.types import (
    ARCHITECTURE_FIELD,
    DEFAULT_GPU_MEMORY_BYTES,
    SPEC_FIELDS,
    Architecture,
    CannotPlan,
    Plan,
    PlanRequest,
    Suggestion,
)

__all__ = [
    "ARCHITECTURE_FIELD",
    "CATALOG",
    "DEFAULT_GPU_MEMORY_BYTES",
    "SPEC_FIELDS",
    "Architecture",
    "CannotPlan",
    "Estimate",
    "Plan",
    "PlanRequest",
    "Suggestion",
    "architecture_from_config",
    "catalog_names",
    "estimate",
    "format_bytes",
    "lookup",
    "param_count",
    "parse_quantity",
    "plan",
    "read_config_dir",
    "resolve_architecture",
    "suggest",
]
