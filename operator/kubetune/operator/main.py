"""Entry point: `kopf run -m kubetune.operator.main --all-namespaces` (or `kubetune operator`)."""

from kubetune.operator import handlers  # noqa: F401  (registers the handlers)
