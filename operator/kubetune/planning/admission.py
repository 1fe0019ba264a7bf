"""The fit check shared by `kubetune validate`, the admission webhook and the operator."""

from kubetune.api.problems import Problem
from kubetune.api.resources import AnyJob
from kubetune.api.semantics import RefLookup
from kubetune.api.trainer_contract import PlanSummary
from kubetune.planning.planner import plan
from kubetune.planning.spec_adapter import plan_request
from kubetune.planning.types import CannotPlan, Plan


def plan_job(job: AnyJob, lookup: RefLookup | None = None, gpu_memory: str | None = None) -> Plan:
    """Raises CannotPlan."""
    return plan(plan_request(job, lookup=lookup, gpu_memory=gpu_memory))


def fit_problems(job: AnyJob, lookup: RefLookup | None = None) -> list[Problem]:
    """A job that cannot fit is an error naming the estimate and the best suggestion that fits;
    one the planner cannot estimate is a warning naming the field that fixes it."""
    try:
        result = plan_job(job, lookup)
    except CannotPlan as exc:
        return [Problem(exc.field, f"cannot plan memory: {exc}", "warning")]
    if result.fits:
        return []
    limit = "spec.resources.memory" if result.cpu_only else "spec.resources.gpuMemory"
    return [Problem(limit, f"does not fit: {result.summary()}")]


def plan_summary(result: Plan) -> PlanSummary:
    """What the trainer config carries of a plan, to explain an out-of-memory failure with it."""
    best = result.best_suggestion
    return PlanSummary(peak_bytes=result.peak_bytes, gpu_memory_bytes=result.gpu_memory_bytes,
                       memory_bytes=result.memory_bytes, fits=result.fits, summary=result.summary(),
                       best_suggestion=best.description if best else None)
