"""`kubetune run`: FineTuneJobs and PreferenceAlignments on this machine, without a cluster.

    kubetune run -f examples/quickstart/finetunejob.yaml -f examples/quickstart/preference.yaml
    kubetune run -f job.yaml --device cuda --output-root /tmp/runs

The same steps and contracts as in a cluster, with this process as the operator:

1. validate each object (schema, CEL, semantic rules; `file://` allowed) — `file://rel/path` is
   relative to the manifest's folder;
2. plan memory (kubetune.planning) and print the plan (a warning locally, not an error: the local
   device is not `spec.resources`);
3. render the trainer config (kubetune.render.build_trainer_config — the pod's ConfigMap) into
   `<output>/kubetune/trainer-config.json`; run the data preflight as a subprocess
   (`python -m kubetune_trainer --config … --stage preflight`, what the cluster's preflight pod
   runs): it checks the data with the cores of this machine into `<output>/kubetune/preflight/` —
   bad data ends the job here (DataInvalid, InsufficientData); then the trainer
   (`python -m kubetune_trainer --config …`): it reads the checked data, trains, evaluates and
   writes `<output>/kubetune/progress.jsonl` (every progress snapshot, tailed here for a live
   progress bar) and `result.json`;
4. show what the trainer decided and did: the gates (kubetune.gates.promotion_decision — the
   operator's function, on the same result) and the promotion the trainer reported (it copies the
   artifact to `spec.output.promotedUri`, its manifest last, only when every gate passed);
5. print base vs tuned for every metric and the verdict; write `<output>/kubetune/status.json`
   (the status the operator would set) and `<output>/kubetune/report.html`.

A PreferenceAlignment whose `fineTuneJobRef` names a FineTuneJob among the files runs after it,
on its promoted copy (else its artifact: kubetune.derivation.dependent_adapter, the operator's rule) as
`sources.adapter`, inheriting its base model, quantization and LoRA shape; when that job does not
end Succeeded, the PreferenceAlignment fails with DependencyFailed.

Outputs and promotedUri may be file:// or s3://. An s3:// output is staged locally in
`~/.cache/kubetune/runs/<name>` (checkpoints, status.json, report.html stay there) and the trainer
uploads the artifact at the end. s3:// credentials and endpoint come from this environment's
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION and AWS_ENDPOINT_URL (the
variables `spec.storage.secretRef` gives a pod).

Secrets: locally a `secretKeyRef {name: N, key: K}` is read from the environment variable
`KUBETUNE_SECRET_<N>_<K>` (upper case, non-alphanumerics as `_`), e.g. KUBETUNE_SECRET_JUDGE_API_KEY.

Exit status: 0 when every job Succeeded; 3 when a job ended GateFailed (and none Failed on its own);
1 when a job Failed (invalid spec, trainer failure, or DependencyFailed); 130 when interrupted
(Ctrl-C here, or the trainer stopped by a signal).
An output folder holding a finished run (a result.json) is cleared first; an interrupted one
(Ctrl-C, SIGTERM: the trainer saves a checkpoint) is resumed from its newest checkpoint.

By job: jobs.py reads and orders the manifests (step 1), runner.py runs one job (steps 2–4),
progress.py shows the trainer's progress, report.py writes
status.json (made by kubetune.derivation.outcome_status, as the operator's status is) and report.html
and prints the table, outcome.py holds how a job ended and the exit status.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import IO

from kubetune.api.resources import FineTuneJob
from kubetune.local.jobs import LocalJob, absolute_file_uri, load_jobs, local_path, order, secret_env_name
from kubetune.local.outcome import (
    EXIT_FAILED,
    EXIT_GATE_FAILED,
    EXIT_INTERRUPTED,
    EXIT_SUCCEEDED,
    Outcome,
    overall_exit,
)
from kubetune.local.progress import ProgressTail, ProgressView
from kubetune.local.report import print_outcome, print_summary
from kubetune.local.runner import Device, Interrupted, Runner

__all__ = [
    "EXIT_FAILED",
    "EXIT_GATE_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_SUCCEEDED",
    "Device",
    "Interrupted",
    "LocalJob",
    "Outcome",
    "ProgressTail",
    "ProgressView",
    "Runner",
    "absolute_file_uri",
    "load_jobs",
    "local_path",
    "order",
    "overall_exit",
    "run",
    "secret_env_name",
]


def run(files: list[str], *, device: Device = "cpu", output_root: str | None = None, out: IO[str] | None = None,
        err: IO[str] | None = None, tty: bool | None = None, verbose: bool = False,
        python: str | None = None) -> tuple[int, list[Outcome]]:
    """Run the jobs in `files` in dependency order; returns (exit status, outcomes)."""
    runner = Runner(device=device, output_root=Path(output_root) if output_root else None,
                    out=out or sys.stdout, err=err or sys.stderr, tty=tty, verbose=verbose,
                    python=python or sys.executable)
    jobs, errors = load_jobs(files)
    for line in errors:
        runner.say(line)
    if errors or not jobs:
        if not jobs and not errors:
            runner.say("no FineTuneJob or PreferenceAlignment in the files given")
        return EXIT_FAILED, []
    specs = {j.name: j.job.spec for j in jobs if j.job is not None and isinstance(j.job, FineTuneJob)}
    outcomes: list[Outcome] = []
    try:
        for lj in order(jobs):
            outcome = runner.run_job(lj, specs.get)
            runner.outcomes[lj.name] = outcome
            outcomes.append(outcome)
            print_outcome(outcome, runner.say)
    except Interrupted:
        runner.say("interrupted: the trainer saved a checkpoint; run the same command again to resume")
        return EXIT_INTERRUPTED, outcomes
    code = overall_exit(outcomes)
    print_summary(outcomes, code, runner.say)
    return code, outcomes
