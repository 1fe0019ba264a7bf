"""kubetune's local Kubernetes control plane for tests, e2e and demos.

A development package (distribution `kubetune-devcluster`, `pip install -e cluster`), not part
of the kubetune product: neither the wheel nor the images carry it. Real etcd, kube-apiserver, kube-controller-manager and kube-scheduler (built from
source at the versions pinned in cluster/versions.env) plus kwok for fake GPU nodes
and pods. Nothing here imports torch.

    from kubetune_devcluster import start, finish_pod
    c = start("/tmp/kt")            # ~10-20 s once the binaries are cached
    c.kubectl("get", "nodes")
    finish_pod(c.kubeconfig, "default", "mypod", "oomkilled")
    c.stop()
"""

from .binaries import Binaries, BinariesError, ensure_binaries, read_versions
from .cli import main_down, main_up
from .cluster import Cluster, ClusterError, print_logs, start, wait_until
from .nodes import GPU_RESOURCE, GPU_TAINT, GPU_TOLERATION, default_nodes, h100_node, l4_node, node
from .pods import (
    COMPLETE,
    EXIT_CODE,
    OUTCOMES,
    TERMINATION_MESSAGE,
    completion_annotations,
    finish_pod,
    wait_for_pods,
)

__all__ = [
    "COMPLETE",
    "EXIT_CODE",
    "GPU_RESOURCE",
    "GPU_TAINT",
    "GPU_TOLERATION",
    "OUTCOMES",
    "TERMINATION_MESSAGE",
    "Binaries",
    "BinariesError",
    "Cluster",
    "ClusterError",
    "completion_annotations",
    "default_nodes",
    "ensure_binaries",
    "finish_pod",
    "h100_node",
    "l4_node",
    "main_down",
    "main_up",
    "node",
    "print_logs",
    "read_versions",
    "start",
    "wait_for_pods",
    "wait_until",
]
