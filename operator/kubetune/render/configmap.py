"""The ConfigMap holding the trainer config JSON (mounted at /etc/kubetune/config.json)."""

from __future__ import annotations

from typing import Any

from kubetune.api.trainer_contract import TrainerConfig
from kubetune.render.meta import child_metadata
from kubetune.render.names import configmap_name

CONFIG_DIR = "/etc/kubetune"
CONFIG_FILE = "config.json"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_FILE}"


def build_configmap(config: TrainerConfig, *, uid: str | None, attempt: int = 1) -> dict[str, Any]:
    kind, name, ns = config.job.kind, config.job.name, config.job.namespace
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_metadata(kind, name, ns, uid, configmap_name(kind, name, attempt)),
        "immutable": True,  # the spec is immutable too; a new generation never rewrites it
        "data": {CONFIG_FILE: config.to_json()},
    }
