"""`kubetune dev cluster up|down` (also `python -m kubetune_devcluster up|down --dir DIR`)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .binaries import cache_root, ensure_binaries
from .cluster import STATE_FILE, Cluster, ClusterError, print_logs, start


def default_dir() -> Path:
    return cache_root() / "devcluster"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir", type=Path, default=None, help=f"cluster state folder (default {default_dir()})"
    )
    parser.add_argument(
        "--real-node", action="store_true",
        help="add a real kubelet node (containerd, CNI, kube-proxy); the cluster then runs in a "
        "network namespace of its own (needs root)",
    )


def _namespace(args: argparse.Namespace | Sequence[str] | None, prog: str) -> argparse.Namespace:
    if isinstance(args, argparse.Namespace):
        return args
    parser = argparse.ArgumentParser(prog=prog)
    add_arguments(parser)
    return parser.parse_args(list(args) if args is not None else None)


def main_up(args: argparse.Namespace | Sequence[str] | None = None) -> int:
    """Start the cluster in the background (it outlives this process); print the export line."""
    ns = _namespace(args, "kubetune dev cluster up")
    workdir = Path(ns.dir or default_dir()).resolve()
    if (workdir / STATE_FILE).exists():
        existing = Cluster.attach(workdir)
        if all(existing.running().values()):
            print(f"# already running in {workdir}", file=sys.stderr)
            print(f"export KUBECONFIG={existing.kubeconfig}")
            return 0
        existing.stop()
    t0 = time.monotonic()
    ensure_binaries()
    try:
        c = start(workdir, detach=True, real_node=bool(getattr(ns, "real_node", False)))
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"# control plane up in {time.monotonic() - t0:.1f}s: {c.server} (logs: {workdir / 'logs'})",
        file=sys.stderr,
    )
    print(f"# kubectl: {c.kubectl_path}  helm: {c.helm}", file=sys.stderr)
    if c.real_node:
        print(f"# real node: containerd socket {c.node_paths.containerd_socket}", file=sys.stderr)
    print(f"export KUBECONFIG={c.kubeconfig}")
    return 0


def main_down(args: argparse.Namespace | Sequence[str] | None = None) -> int:
    """Stop the cluster recorded in --dir (pid files); a no-op when none runs."""
    ns = _namespace(args, "kubetune dev cluster down")
    workdir = Path(ns.dir or default_dir()).resolve()
    if not (workdir / STATE_FILE).exists():
        print(f"# no cluster state in {workdir}", file=sys.stderr)
        return 0
    Cluster.attach(workdir).stop()
    print(f"# stopped the cluster in {workdir}", file=sys.stderr)
    return 0


def main_logs(args: argparse.Namespace | Sequence[str] | None = None) -> int:
    ns = _namespace(args, "kubetune dev cluster logs")
    print_logs(Cluster.attach(Path(ns.dir or default_dir()).resolve()), file=sys.stdout)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"up": main_up, "down": main_down, "logs": main_logs}
    if not argv or argv[0] not in commands:
        print("usage: python -m kubetune_devcluster {up|down|logs} [--dir DIR]", file=sys.stderr)
        return 2
    return commands[argv[0]](argv[1:])
