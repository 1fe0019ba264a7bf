"""`kubetune operator`: run the operator in this process (kopf), against the current kubeconfig or
the in-cluster service account. Settings come from KUBETUNE_* (kubetune.controller.config), the flags
override them. Equivalent to `kopf run -m kubetune.controller.main`."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import replace

from kubetune.controller.config import OperatorSettings


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("operator", help="run the kubetune operator (kopf) against the current cluster")
    p.add_argument("-n", "--namespace", action="append", default=[],
                   help="watch only this namespace (repeatable); default: all (KUBETUNE_NAMESPACES)")
    p.add_argument("--metrics-port", type=int, help="Prometheus /metrics port (KUBETUNE_METRICS_PORT, default 8080)")
    p.add_argument("--webhook", action="store_true", help="serve the validating admission webhook (KUBETUNE_WEBHOOK)")
    p.add_argument("--liveness", default="http://0.0.0.0:8081/healthz", help="kopf liveness endpoint ('' to disable)")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(func=run)


def settings_from(args: argparse.Namespace, env: Mapping[str, str] | None = None) -> OperatorSettings:
    """KUBETUNE_* settings with the command line's overrides."""
    settings = OperatorSettings.from_env(env)
    if args.namespace:
        settings = replace(settings, namespaces=tuple(args.namespace))
    if args.metrics_port is not None:
        settings = replace(settings, metrics_port=args.metrics_port)
    if args.webhook:
        settings = replace(settings, webhook=True)
    return settings


def run(args: argparse.Namespace) -> int:
    import logging

    from kubetune.controller.app import build_operator

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    build_operator(settings_from(args)).run(liveness_endpoint=args.liveness or None)
    return 0
