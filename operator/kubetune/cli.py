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
    from kubetune.validation import validate_files

    lines, ok = validate_files(args.files, local=args.local, fit=not args.no_plan)
    for line in lines:
        print(line)
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubetune", description="Fine-tune LLMs on Kubernetes.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check manifests offline as the cluster would at apply time")
    p.add_argument("-f", "--filename", dest="files", action="append", required=True, help="manifest file (repeatable)")
    p.add_argument("--local", action="store_true", help="check for `kubetune run` (file:// sources allowed without a warning)")
    p.add_argument("--no-plan", action="store_true", help="skip the memory fit check")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("crds", help="print the CRD YAML generated from the API models")
    p.add_argument("--out", help="write one file per kind into this folder instead")
    p.set_defaults(func=_cmd_crds)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
