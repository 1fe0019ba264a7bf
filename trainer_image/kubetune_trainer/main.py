"""kubetune-trainer: run one fine-tuning job from a rendered trainer config.

The operator mounts the config (kubetune.io/trainer-config/v1, a JSON file from a ConfigMap) at
/etc/kubetune/config.json; `kubetune run` writes it to a file and runs this same entry point.

    kubetune-trainer --config /etc/kubetune/config.json
    kubetune-trainer --config /etc/kubetune/config.json --stage preflight
    kubetune-trainer launch --nproc-per-node=2 --standalone -- --config /etc/kubetune/config.json
    python -m kubetune_trainer --config run/config.json --device cpu

`--stage preflight` only checks the data (CPU only; no model, no torch) into the config's
sources.checkedData, which training then reads without a second scan; the operator runs it in a
pod of its own before the GPU Job, `kubetune run` before the trainer (kubetune_trainer.preflight).

Progress goes to <output>/kubetune/progress.json (and the pod annotation, and /metrics), the result
to <output>/kubetune/result.json and the termination log. Exit status: 0 succeeded; otherwise the
failure's code from kubetune.api.trainer_contract.EXIT_CODES (3 data, 4 model, 5 diverged, 6 out
of memory, 9 a torchrun rank killed, 143 interrupted, 1 other), 2 for a bad command line or config.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kubetune.api.trainer_contract import TrainerResult

DEFAULT_CONFIG = "/etc/kubetune/config.json"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kubetune-trainer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=os.environ.get("KUBETUNE_CONFIG", DEFAULT_CONFIG),
                   help="trainer config JSON (default: $KUBETUNE_CONFIG or %(default)s)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override the config's device")
    p.add_argument("--output", help="override sources.output (a local folder)")
    p.add_argument("--stage", choices=["train", "preflight"], default="train",
                   help="train (default): the whole job; preflight: only the data check")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["launch"]:  # torchrun, a process per GPU, with typed exit codes (kubetune_trainer.launch)
        from kubetune_trainer.launch import main as launch

        return launch(argv[1:])
    args = parser().parse_args(argv)
    from pydantic import ValidationError

    from kubetune.api.trainer_contract import EXIT_USAGE, TrainerConfig

    try:
        with open(args.config, encoding="utf-8") as fh:
            config = TrainerConfig.model_validate_json(fh.read())
    except (OSError, ValueError, ValidationError) as e:
        print(f"kubetune-trainer: cannot read the config {args.config}: {str(e).splitlines()[0]}", file=sys.stderr)
        return EXIT_USAGE
    if args.device:
        config.device = args.device
    if args.output:
        config.sources.output = args.output
    if args.stage == "preflight":
        from kubetune_trainer.preflight import run_stage

        return exit_status(run_stage(config))
    threads = os.environ.get("KUBETUNE_TORCH_THREADS")
    from kubetune_trainer.run import run

    if threads:
        import torch

        torch.set_num_threads(int(threads))
    return exit_status(run(config))


def exit_status(result: TrainerResult) -> int:
    from kubetune.api.trainer_contract import EXIT_CODES

    return 0 if result.outcome == "succeeded" else EXIT_CODES.get(result.reason or "", 1)


if __name__ == "__main__":
    raise SystemExit(main())
