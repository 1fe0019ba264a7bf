"""The data preflight as a stage of its own: ``kubetune-trainer --config FILE --stage preflight``.

In a cluster it is the command of the preflight Job's pod — CPU only, no GPU requested — which the
operator runs before it creates the GPU Job; ``kubetune run`` runs it as a subprocess before the
trainer. It checks the data with as many processes as the pod's CPUs
(``$KUBETUNE_PREFLIGHT_CPUS``, which the pod spec sets from its CPU limit, else the CPUs this
process may use) and writes to ``sources.checkedData``:

- ``train.jsonl``, ``validation.jsonl``: the checked, redacted, deduplicated splits (only when ok);
- ``replay.jsonl`` (with spec.dataset.replay): the replay set, checked the same way;
- ``report.json``: the full data report (kubetune.data.DataReport);
- ``result.json``: a TrainerResult — ``data`` (the summary that becomes ``status.data``), and in
  ``details.checkedData`` the job's uid and each file's size and sha256 (:class:`CheckedData`).

The result also goes to the termination log (≤ 4 KiB, the same channel as the trainer's final
result) and the exit status is the trainer's (0; 3 DataInvalid / InsufficientData; 1 other).
An ``s3://`` location is written locally first and uploaded (fsspec); a local one (a mounted PVC,
a file:// path) directly.

Training reads it back with :func:`read_checked`: the result must be this job's (same uid), ok,
and every file the size and sha256 the preflight wrote — a check of the bytes, not a second scan.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

from pydantic import ValidationError

from kubetune.api.base import KubeModel
from kubetune.api.enums import Reason
from kubetune.api.model_cache import ModelCacheReport, cacheable
from kubetune.api.status import DataSummary
from kubetune.api.trainer_contract import TrainerConfig, TrainerResult
from kubetune_trainer.data import (
    REPLAY_FILE,
    TRAIN_FILE,
    VALIDATION_FILE,
    check_data,
    data_failure,
    dataset_paths,
    replay_mixed,
    replay_path,
    summary,
)
from kubetune_trainer.failures import TrainerFailure, classify
from kubetune_trainer.reporting import Log, stderr_log, write_atomic

RESULT_FILE = "result.json"
PROGRESS_FILE = "progress.json"  # the model download's progress (beside it: progress.jsonl, every snapshot)
CPUS_ENV = "KUBETUNE_PREFLIGHT_CPUS"


class FileDigest(KubeModel):
    size: int
    sha256: str


class CheckedData(KubeModel):
    """What the preflight stage wrote, for training to check before it reads (``details.checkedData``)."""

    job_uid: str | None = None
    train: FileDigest
    validation: FileDigest
    replay: FileDigest | None = None  # spec.dataset.replay's checked set
    processes: int = 1


def digest(path: Path) -> FileDigest:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return FileDigest(size=path.stat().st_size, sha256=h.hexdigest())


def checked_location(config: TrainerConfig) -> str:
    """``sources.checkedData``, else ``<output>/kubetune/preflight``."""
    return config.sources.checked_data or str(Path(config.sources.output) / "kubetune" / "preflight")


def _remote(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def _local(location: str) -> Path:
    return Path(location[len("file://"):] if location.startswith("file://") else location)


def preflight_cpus() -> int:
    """The CPUs the stage may use: ``$KUBETUNE_PREFLIGHT_CPUS`` (the pod's CPU limit) capped by what this
    process may run on."""
    from kubetune.data.parallel import usable_cpus

    cpus = usable_cpus()
    try:
        return max(1, min(cpus, int(os.environ.get(CPUS_ENV, "") or cpus)))
    except ValueError:
        return cpus


def run_stage(config: TrainerConfig, *, log: Log = stderr_log) -> TrainerResult:
    """Check the data into ``sources.checkedData``; every ending is a TrainerResult, also written
    there and to the termination log."""
    started = time.monotonic()
    location = checked_location(config)
    folder = Path(tempfile.mkdtemp(prefix="kubetune-preflight-")) if _remote(location) else _local(location)
    data: DataSummary | None = None
    try:
        from kubetune.data.parallel import auto_processes

        dataset, golden = dataset_paths(config, log)
        processes = auto_processes(dataset.stat().st_size, cpus=preflight_cpus())
        log(f"[preflight] checking {config.sources.dataset} ({dataset.stat().st_size / 1e6:,.1f} MB) "
            f"with {processes} process{'es' if processes > 1 else ''}")
        for stale in (RESULT_FILE, TRAIN_FILE, VALIDATION_FILE, REPLAY_FILE, PROGRESS_FILE, PROGRESS_FILE.replace(".json", ".jsonl")):
            (folder / stale).unlink(missing_ok=True)  # a file of an earlier run is never taken for this one's
        report = check_data(dataset=dataset, spec=config.spec, out_dir=folder, golden=golden, log=log,
                            processes=processes, replay=replay_path(config))
        data = summary(report, replay_mixed(report, config.spec) if report.ok else None)
        if not report.ok:
            raise data_failure(report)
        replay = folder / REPLAY_FILE
        checked = CheckedData(job_uid=config.job.uid, train=digest(folder / TRAIN_FILE),
                              validation=digest(folder / VALIDATION_FILE), processes=report.processes,
                              replay=digest(replay) if replay.exists() else None)
        mb_s = report.bytes / 1e6 / report.seconds if report.seconds else 0.0
        details = {"checkedData": checked.model_dump(by_alias=True, mode="json"), "location": location,
                   "mbPerSecond": round(mb_s, 3)}
        # the base model into the shared cache, before any GPU is requested
        cached = cache_model(config, log, progress_path=folder / PROGRESS_FILE)
        if cached is not None:
            details["modelCache"] = cached.model_dump(by_alias=True, exclude_none=True, mode="json")
        details["seconds"] = round(time.monotonic() - started, 2)
        result = TrainerResult(outcome="succeeded", reason=Reason.SUCCEEDED, message=report.message, data=data,
                               details=details)
        log(f"[preflight] ok: {report.message} in {report.seconds:.1f} s ({mb_s:.2f} MB/s, "
            f"{report.processes} process{'es' if report.processes > 1 else ''})")
    except BaseException as e:  # every ending becomes a result
        failure = classify(e, config.plan)
        details = {**failure.details, "seconds": round(time.monotonic() - started, 2)}
        result = TrainerResult(outcome="failed", reason=failure.reason, message=failure.message, data=data,
                               details=details)
        log(f"[preflight] failed: {failure.reason}: {failure.message}")
    _finish(config, result, folder, location, log)
    return result


def cache_model(config: TrainerConfig, log: Log, *, progress_path: Path) -> ModelCacheReport | None:
    """With a model cache configured and an hf:// or s3:// base model: make sure the cache holds it
    (downloading it once) and lease it for this job — ModelUnavailable / StorageUnavailable when it
    cannot be had. None without a cache, or for a model used in place (pvc://, a path).

    While it downloads, its progress (``modelCache.progress``: bytes done, total, ETA) goes through the
    trainer's Reporter: the pod's ``kubetune.io/progress`` annotation (at most once per
    ``report.intervalSeconds``), `progress_path` and its ``.jsonl`` history, and the log."""
    if config.model_cache is None or not cacheable(config.sources.model):
        return None
    from kubetune.api.model_cache import DownloadProgress
    from kubetune_trainer.model_cache import ModelCache
    from kubetune_trainer.reporting import Reporter

    uri = config.sources.model
    reporter = Reporter(config, log=log, progress_path=progress_path, count_starts=False, metrics=False)

    def on_progress(p: DownloadProgress) -> None:
        edge = p.bytes_done == 0 or p.eta_seconds == 0  # the start and the end always go out
        reporter.update(stage="preflight", model_cache=ModelCacheReport(uri=uri, used=True, bytes_downloaded=p.bytes_done,
                                                                      progress=p),
                        summary=f"downloading the base model: {p.line()}", force=edge)

    try:
        _, report = ModelCache(config.model_cache).ensure(
            uri, revision=config.sources.model_revision, job_uid=job_id(config),
            token_env=config.secret_env.hf_token, log=log, on_progress=on_progress)
    finally:
        reporter.close()  # sends the last snapshot
    return report


def job_id(config: TrainerConfig) -> str:
    return config.job.uid or f"{config.job.namespace or 'local'}.{config.job.name}"


def _finish(config: TrainerConfig, result: TrainerResult, folder: Path, location: str, log: Log) -> None:
    try:
        write_atomic(folder / RESULT_FILE, result.to_json() + "\n")
        if _remote(location):
            _upload(folder, location)
    except Exception as e:  # the termination message still reports the result
        log(f"warning: cannot write the preflight's files to {location}: {type(e).__name__}: {e}")
        if result.outcome == "succeeded":
            result.outcome, result.reason = "failed", Reason.TRAINER_ERROR
            result.message = f"cannot write the checked data to {location}: {type(e).__name__}: {e}"[:1024]
    finally:
        if _remote(location):
            shutil.rmtree(folder, ignore_errors=True)
    if config.report.termination_log:
        try:
            Path(config.report.termination_log).write_text(result.termination_message())
        except OSError as e:
            log(f"warning: cannot write the termination log: {e}")


def _upload(folder: Path, location: str) -> None:
    """The stage's files to a remote folder; result.json last, so a reader that finds it finds the rest."""
    from kubetune_trainer.storage import put_files

    names = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name != RESULT_FILE)
    put_files(folder, [*names, RESULT_FILE], location, doing="cannot write the checked data to")


def read_checked(config: TrainerConfig, *, log: Log = stderr_log) -> tuple[DataSummary, Path, Path | None]:
    """The summary and the train / validation files the preflight stage wrote for this job, after
    checking them (TrainerFailure when they are missing, another run's, failed, or changed)."""
    location = checked_location(config)
    if _remote(location):
        from kubetune_trainer.sources import SourceError, resolve

        try:
            folder = resolve(location, kind="checked data", token_env=config.secret_env.hf_token)  # a folder
        except SourceError as e:
            raise TrainerFailure(Reason.TRAINER_ERROR, f"the data preflight's files are unavailable: {e}") from e
    else:
        folder = _local(location)
    where = f"the data preflight's result {folder / RESULT_FILE}"
    try:
        result = TrainerResult.parse((folder / RESULT_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TrainerFailure(Reason.TRAINER_ERROR, (
            f"{where} is missing: the preflight stage (kubetune-trainer --stage preflight) must run before "
            "training when the config names sources.checkedData")) from None
    except (OSError, ValueError) as e:
        raise TrainerFailure(Reason.TRAINER_ERROR, f"{where} is unreadable: {str(e).splitlines()[0]}") from None
    if result.outcome != "succeeded":
        raise TrainerFailure(result.reason or Reason.DATA_INVALID, f"the data preflight failed: {result.message}")
    try:
        checked = CheckedData.model_validate(result.details.get("checkedData"))
    except ValidationError as e:
        raise TrainerFailure(Reason.TRAINER_ERROR, f"{where} does not list the checked files: "
                                                   f"{str(e).splitlines()[0]}") from None
    if checked.job_uid and config.job.uid and checked.job_uid != config.job.uid:
        raise TrainerFailure(Reason.TRAINER_ERROR, (
            f"{where} belongs to another run (job uid {checked.job_uid}, this one is {config.job.uid}); "
            "its preflight Job must run again"))
    if getattr(config.spec.dataset, "replay", None) is not None and checked.replay is None:
        raise TrainerFailure(Reason.TRAINER_ERROR, (
            f"{where} has no checked replay set, but spec.dataset.replay is set; its preflight Job must run again"))
    files = [(TRAIN_FILE, checked.train), (VALIDATION_FILE, checked.validation)]
    if checked.replay is not None:
        files.append((REPLAY_FILE, checked.replay))
    for name, want in files:
        try:
            got = digest(folder / name)
        except OSError as e:
            raise TrainerFailure(Reason.TRAINER_ERROR, f"the checked data file {folder / name} is unreadable: "
                                                       f"{e.strerror or e}") from None
        if got != want:
            raise TrainerFailure(Reason.TRAINER_ERROR, (
                f"the checked data file {folder / name} changed after the data preflight (size {got.size}, "
                f"expected {want.size}, or its sha256 differs); its preflight Job must run again"))
    if result.data is None:
        raise TrainerFailure(Reason.TRAINER_ERROR, f"{where} has no data summary")
    log(f"data: checked by the data preflight ({result.message}); read from {location}, no second scan")
    validation = folder / VALIDATION_FILE if checked.validation.size else None
    return result.data, folder / TRAIN_FILE, validation


__all__ = ["CPUS_ENV", "RESULT_FILE", "CheckedData", "cache_model", "checked_location", "read_checked", "run_stage"]
