"""`kubetune-trainer launch TORCHRUN-OPTIONS -- TRAINER-OPTIONS`: torchrun with one trainer process per
GPU (one gloo process per requested GPU on CPU), and an exit status the operator can read.

torchrun itself exits 1 whatever happened to its workers. This launcher runs torchrun's own
`run()` in-process and turns its outcome into the trainer's exit codes (kubetune.api.trainer_contract
.EXIT_CODES), so the Job's podFailurePolicy and the status derivation see a typed reason:

- every worker finished: 0;
- a worker ended with a permanent trainer failure (bad data, no model, diverged, OOM, ...): that code —
  the worker wrote its own result;
- a worker was killed by a signal (the kernel's OOM killer inside the pod, a crash, `kill -9`): the
  other workers were stopped by torchrun, and the launcher ends with RankFailed (9, retried: the next
  pod resumes from the newest complete — for FSDP, sharded — checkpoint), writing that result where
  the trainer writes its own (result.json, the termination log) so status names the rank and signal;
- the launcher itself got SIGTERM (preemption, a deleted pod): torchrun forwarded it, the workers
  checkpointed; Interrupted (143);
- otherwise the first failed worker's code (1, TrainerError, with the worker's result).
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

__all__ = ["main", "split_argv"]


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """TORCHRUN-OPTIONS -- TRAINER-OPTIONS ⇒ (torchrun options, trainer options)."""
    if "--" not in argv:
        raise SystemExit("usage: kubetune-trainer launch TORCHRUN-OPTIONS -- TRAINER-OPTIONS")
    i = argv.index("--")
    return argv[:i], argv[i + 1 :]


def main(argv: list[str]) -> int:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    from kubetune.api.trainer_contract import EXIT_CODES

    torchrun, trainer = split_argv(argv)
    args = get_args_parser().parse_args([*torchrun, "-m", "kubetune_trainer.main", *trainer])
    try:
        run(args)
    except ChildFailedError as e:
        return _failed(e.failures, trainer)
    except SignalException as e:
        print(f"kubetune-trainer launch: {signal.Signals(e.sigval).name}; the workers were stopped", file=sys.stderr)
        return EXIT_CODES["Interrupted"]
    return 0


def _failed(failures: dict[int, Any], trainer: list[str]) -> int:
    from kubetune.api.exit_codes import PERMANENT_EXIT_CODES
    from kubetune.api.trainer_contract import EXIT_CODES

    by_rank = sorted(failures.items())
    for _, f in by_rank:  # a worker's own verdict first: it wrote its result
        if f.exitcode in PERMANENT_EXIT_CODES:
            return int(f.exitcode)
    # the root cause: a rank killed by something other than the SIGTERM torchrun stops the others with
    # (any signal when that is all there is), the earliest first
    killed = sorted(((rank, f) for rank, f in by_rank if f.exitcode < 0),
                    key=lambda rf: (-rf[1].exitcode == signal.SIGTERM, rf[1].timestamp, rf[0]))
    if killed:
        rank, f = killed[0]
        name = _signal_name(-f.exitcode)
        _write_result(trainer, "RankFailed", (
            f"rank {rank} (local rank {f.local_rank}) was killed by {name}; torchrun stopped the other ranks. "
            "A retry resumes from the newest complete checkpoint"
            + ("; SIGKILL inside a pod is often the kernel's OOM killer: check resources.memory" if name == "SIGKILL" else "")))
        return EXIT_CODES["RankFailed"]
    return int(by_rank[0][1].exitcode) or 1


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def _write_result(trainer: list[str], reason: str, message: str) -> None:
    """The result where the trainer writes its own: <output>/kubetune/result.json and the termination log."""
    from kubetune.api.trainer_contract import TrainerConfig, TrainerResult
    from kubetune_trainer.main import parser
    from kubetune_trainer.reporting import write_atomic

    print(f"kubetune-trainer launch: {reason}: {message}", file=sys.stderr)
    try:
        opts = parser().parse_args(trainer)
        config = TrainerConfig.model_validate_json(Path(opts.config).read_text(encoding="utf-8"))
    except (OSError, ValueError, SystemExit) as e:
        print(f"kubetune-trainer launch: cannot read the config to record the result: {e}", file=sys.stderr)
        return
    output = Path(opts.output or config.sources.output)
    result = TrainerResult(outcome="failed", reason=reason, message=message)
    previous = output / "kubetune" / "result.json"
    try:  # keep what rank 0 reported before it was stopped (progress, data summary)
        old = TrainerResult.model_validate_json(previous.read_text(encoding="utf-8"))
        result = old.model_copy(update={"outcome": "failed", "reason": reason, "message": message})
    except (OSError, ValueError):
        pass
    try:
        write_atomic(previous, json.dumps(json.loads(result.to_json()), indent=2, sort_keys=True) + "\n")
        if config.report.termination_log:
            Path(config.report.termination_log).write_text(result.termination_message())
    except OSError as e:
        print(f"kubetune-trainer launch: cannot write the result: {e}", file=sys.stderr)
