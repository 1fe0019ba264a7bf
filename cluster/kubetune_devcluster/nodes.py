"""Fake nodes of the local control plane (kwok manages them; nothing runs on them)."""

from __future__ import annotations

from typing import Any

KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_NODE_ANNOTATION_VALUE = "fake"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def node(
    name: str,
    *,
    cpu: str,
    memory: str,
    ephemeral_storage: str = "1Ti",
    pods: str = "110",
    instance_type: str = "",
    gpus: int = 0,
    gpu_product: str = "",
    gpu_memory_mib: int = 0,
    zone: str = "kwok-a",
) -> dict[str, Any]:
    """A kwok-managed Node manifest (status included: capacity == allocatable)."""
    labels = {
        "type": "kwok",
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "topology.kubernetes.io/zone": zone,
    }
    if instance_type:
        labels["node.kubernetes.io/instance-type"] = instance_type
    capacity = {"cpu": cpu, "memory": memory, "ephemeral-storage": ephemeral_storage, "pods": pods}
    taints: list[dict[str, str]] = []
    if gpus:
        labels.update(
            {
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.product": gpu_product,
                "nvidia.com/gpu.memory": str(gpu_memory_mib),
                "nvidia.com/gpu.count": str(gpus),
            }
        )
        capacity[GPU_RESOURCE] = str(gpus)
        taints.append(dict(GPU_TAINT))
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {
                KWOK_NODE_ANNOTATION: KWOK_NODE_ANNOTATION_VALUE,
                "node.alpha.kubernetes.io/ttl": "0",
            },
            "labels": labels,
        },
        "spec": {"taints": taints} if taints else {},
        "status": {"capacity": dict(capacity), "allocatable": dict(capacity)},
    }


def h100_node(name: str) -> dict[str, Any]:
    """8x H100 80GB HBM3 (p5.48xlarge-like)."""
    return node(
        name,
        cpu="192",
        memory="2Ti",
        ephemeral_storage="8Ti",
        instance_type="p5.48xlarge",
        gpus=8,
        gpu_product="NVIDIA-H100-80GB-HBM3",
        gpu_memory_mib=81559,
    )


def l4_node(name: str) -> dict[str, Any]:
    """4x L4 24GB (g6.12xlarge-like)."""
    return node(
        name,
        cpu="48",
        memory="192Gi",
        ephemeral_storage="2Ti",
        instance_type="g6.12xlarge",
        gpus=4,
        gpu_product="NVIDIA-L4",
        gpu_memory_mib=24576,
    )


def default_nodes(cpu_node: bool = True) -> list[dict[str, Any]]:
    """Two 8x H100 80GB nodes, one 4x L4 24GB node and (unless `cpu_node` is False: a cluster
    with a real node, where CPU pods must run for real) one CPU-only node (untainted)."""
    nodes = [h100_node("kwok-h100-0"), h100_node("kwok-h100-1"), l4_node("kwok-l4-0")]
    if cpu_node:
        nodes.append(node("kwok-cpu-0", cpu="32", memory="128Gi", instance_type="m7i.8xlarge"))
    return nodes
