"""Entry point for kopf's own CLI: `kopf run -m kubetune.controller.main --all-namespaces`.

kopf imports this module and runs the handlers on its default registry, so importing it builds the
operator from the environment (KUBETUNE_*) onto that registry — the one module that does anything
when imported. Everything else calls kubetune.controller.app.build_operator (`kubetune operator`).
"""

import kopf

from kubetune.controller.app import build_operator
from kubetune.controller.config import OperatorSettings

OPERATOR = build_operator(OperatorSettings.from_env(), registry=kopf.get_default_registry())
