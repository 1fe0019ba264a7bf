"""`kubetune operator`: run the operator in this process (kopf), against the current kubeconfig or
the in-cluster service account. Equivalent to `kopf run -m kubetune.operator.main`."""

from __future__ import annotations

import argparse
import os


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("operator", help="run the kubetune operator (kopf) against the current cluster")
    p.add_argument("-n", "--namespace", action="append", default=[],
                   help="watch only this namespace (repeatable); default: all (KUBETUNE_NAMESPACES)")
    p.add_argument("--metrics-port", type=int, help="Prometheus /metrics port (KUBETUNE_METRICS_PORT, default 8080)")
    p.add_argument("--webhook", action="store_true", help="serve the validating admission webhook (KUBETUNE_WEBHOOK)")
    p.add_argument("--liveness", default="http://0.0.0.0:8081/healthz", help="kopf liveness endpoint ('' to disable)")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    if args.namespace:
        os.environ["KUBETUNE_NAMESPACES"] = ",".join(args.namespace)
    if args.metrics_port is not None:
        os.environ["KUBETUNE_METRICS_PORT"] = str(args.metrics_port)
    if args.webhook:
        os.environ["KUBETUNE_WEBHOOK"] = "true"
    import kopf

    from kubetune.operator import handlers

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ns = handlers.SETTINGS.namespaces
    kopf.run(clusterwide=not ns, namespaces=list(ns), standalone=not handlers.SETTINGS.peering,
             liveness_endpoint=args.liveness or None)
    return 0
