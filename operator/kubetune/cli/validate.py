"""`kubetune validate`: files ⇒ one line per problem, `<file>: <kind>/<name>: <path>: <message>`."""

from kubetune.api.constants import FINETUNEJOB
from kubetune.api.problems import Problem
from kubetune.api.resources import FineTuneJob, parse_resource
from kubetune.api.semantics import RefLookup
from kubetune.api.spec import FineTuneJobSpec
from kubetune.api.validate import FitCheck, defaulted, is_kubetune, validate_object
from kubetune.manifests import Document, ManifestError, load_documents
from kubetune.planning.admission import fit_problems


def lookup_in(documents: list[Document]) -> RefLookup:
    """FineTuneJobs among the files given stand in for the namespace's."""
    jobs: dict[str, FineTuneJobSpec] = {}
    for doc in documents:
        obj = doc.obj
        if is_kubetune(obj) and isinstance(obj, dict) and obj.get("kind") == FINETUNEJOB:
            try:
                job = parse_resource(defaulted(obj))
            except Exception:  # invalid ones are reported on their own
                continue
            if isinstance(job, FineTuneJob) and job.metadata.name:
                jobs[job.metadata.name] = job.spec
    return jobs.get


def validate_files(files: list[str], *, local: bool = False, fit: bool = True) -> tuple[list[str], bool]:
    lines: list[str] = []
    ok = True
    documents: list[Document] = []
    for path in files:
        try:
            documents += load_documents(path)
        except ManifestError as exc:
            lines.append(str(exc))
            ok = False
    lookup = lookup_in(documents)
    fit_check: FitCheck | None = fit_problems if fit else None
    for doc in documents:
        if not is_kubetune(doc.obj):
            kind = doc.obj.get("kind", "?") if isinstance(doc.obj, dict) else type(doc.obj).__name__
            lines.append(f"{doc.file}: {doc.label}: skipped: {kind} is not a kubetune kind")
            continue
        problems: list[Problem] = validate_object(doc.obj, local=local, lookup=lookup, fit_check=fit_check)
        for problem in problems:
            prefix = "warning: " if problem.severity == "warning" else ""
            lines.append(f"{doc.file}: {doc.label}: {prefix}{problem}")
            ok = ok and problem.severity != "error"
        if not any(p.severity == "error" for p in problems):
            lines.append(f"{doc.file}: {doc.label}: valid")
    return lines, ok
