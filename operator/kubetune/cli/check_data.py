"""``kubetune check-data``: the data preflight from the command line.

    kubetune check-data train.jsonl --format chat
    kubetune check-data train.jsonl.gz --format preference --pii reject --output json
    kubetune check-data train.jsonl --format instruction --redact clean.jsonl --error-policy skip
    kubetune check-data train.jsonl --format chat --near-duplicates
    kubetune check-data big.jsonl --format chat --processes 8

Exit 0 when the data is ok, 1 when it is not (the report says why), 2 for bad arguments.
No traceback reaches the user for any input file.
"""

from __future__ import annotations

import argparse
import os
import sys

from kubetune.api.enums import ErrorPolicy, PiiPolicy
from kubetune.data.formats import Format
from kubetune.data.pii import PiiScanUnavailable
from kubetune.data.preflight import DEFAULT_MIN_EXAMPLES, preflight
from kubetune.data.reader import DEFAULT_MAX_LINE_BYTES


def build_parser(prog: str = "kubetune check-data") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Check a fine-tuning dataset: format errors by line, too little data, PII/PHI, "
        "duplicates, lengths, and the train/validation split.",
    )
    p.add_argument("file", metavar="FILE", help="JSONL, a JSON array, or gzip of either")
    p.add_argument("--format", required=True, choices=[f.value for f in Format], help="dataset format")
    p.add_argument(
        "--min-examples",
        type=int,
        default=DEFAULT_MIN_EXAMPLES,
        metavar="N",
        help=f"fewer valid examples fail with InsufficientData (default {DEFAULT_MIN_EXAMPLES})",
    )
    p.add_argument(
        "--pii",
        choices=[x.value for x in PiiPolicy],
        default=PiiPolicy.REDACT.value,
        help="redact: placeholders such as <EMAIL>; reject: fail with line numbers; off: no scan",
    )
    p.add_argument(
        "--error-policy",
        choices=[x.value for x in ErrorPolicy],
        default=ErrorPolicy.FAIL.value,
        help="fail: any bad line fails; skip: drop bad lines (fails above --max-bad-fraction)",
    )
    p.add_argument(
        "--max-bad-fraction",
        type=float,
        default=0.1,
        metavar="F",
        help="with --error-policy skip, the largest share of bad lines allowed (default 0.1)",
    )
    p.add_argument(
        "--redact", metavar="OUT", help="write the cleaned data (redacted, deduplicated, valid lines) here"
    )
    p.add_argument("--train-out", metavar="OUT", help="write the train split here")
    p.add_argument("--validation-out", metavar="OUT", help="write the validation split here")
    p.add_argument(
        "--validation-split", type=float, default=0.05, metavar="F", help="share held out (default 0.05)"
    )
    p.add_argument("--seed", type=int, default=42, help="split seed (default 42)")
    p.add_argument(
        "--max-seq-length", type=int, metavar="N", help="report the share of examples longer than N tokens"
    )
    p.add_argument(
        "--near-duplicates",
        action="store_true",
        help="also drop near-duplicates: examples whose 3-word shingles overlap an earlier kept "
        "example's by an estimated Jaccard similarity of 0.8 or more (off by default)",
    )
    p.add_argument("--golden", metavar="FILE", help="golden set; overlap with the training data is an error")
    p.add_argument(
        "--max-line-bytes",
        type=int,
        default=DEFAULT_MAX_LINE_BYTES,
        metavar="N",
        help=f"largest record accepted (default {DEFAULT_MAX_LINE_BYTES} = 1 MiB)",
    )
    p.add_argument(
        "--processes",
        type=_processes,
        default=None,
        metavar="N",
        help="processes checking the records (default auto: one per 4 MiB of file, up to the CPUs this process "
        "may use); the report and the files written do not depend on it",
    )
    p.add_argument("--output", choices=["text", "json"], default="text", help="report format (default text)")
    return p


def _processes(text: str) -> int | None:
    if text == "auto":
        return None
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be auto or >= 1, got {text}")
    return n


def check_data_main(argv: list[str]) -> int:
    """Run ``check-data`` with ``argv`` (without the program and subcommand names); return the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse prints its own usage message
        return int(e.code) if isinstance(e.code, int) else 2
    try:
        report = preflight(
            args.file,
            format=args.format,
            min_examples=args.min_examples,
            pii=args.pii,
            error_policy=args.error_policy,
            max_seq_length=args.max_seq_length,
            validation_split=args.validation_split,
            seed=args.seed,
            golden_path=args.golden,
            redact_out=args.redact,
            train_out=args.train_out,
            validation_out=args.validation_out,
            max_bad_fraction=args.max_bad_fraction,
            max_line_bytes=args.max_line_bytes,
            near_duplicates=args.near_duplicates,
            processes=args.processes,
        )
    except (ValueError, PiiScanUnavailable) as e:
        print(f"kubetune check-data: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. an output path that cannot be written
        print(
            f"kubetune check-data: error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr
        )
        return 2
    except KeyboardInterrupt:
        print("kubetune check-data: interrupted", file=sys.stderr)
        return 130
    try:
        print(report.to_json() if args.output == "json" else report.text())
        sys.stdout.flush()
    except BrokenPipeError:  # `... | head`: the reader left; the exit code still tells
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # no second error when Python flushes at exit
    return 0 if report.ok else 1


def main() -> None:  # pragma: no cover - convenience entry for `python -m kubetune.cli.check_data`
    sys.exit(check_data_main(sys.argv[1:]))


if __name__ == "__main__":  # pragma: no cover
    main()
