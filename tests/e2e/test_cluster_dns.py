"""The real node's cluster DNS (kubetune_devcluster.dns) as a process against the real API server:
what the EndpointSlice controller publishes for a headless Service's pods (hostname + subdomain) is
what it answers, on a UDP socket on loopback; a pod gone is a name gone; foreign names are NXDOMAIN.
(On the real node it serves the pods: tests/realnode/test_real_node.py, the two-pod CPU job.)"""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune_devcluster import Cluster, wait_until
from kubetune_devcluster.dns import NOERROR, NXDOMAIN, probe

pytestmark = pytest.mark.e2e


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def dns(cluster: Cluster, tmp_path: Path) -> Iterator[tuple[str, int]]:
    """The server, reading the API with the admin certificate (a kubeconfig of file paths)."""
    pki = cluster.pki
    kubeconfig = tmp_path / "dns.kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "clusters": [{"name": "c", "cluster": {"server": cluster.server, "certificate-authority": str(pki.ca_crt)}}],
        "users": [{"name": "u", "user": {"client-certificate": str(pki.cert("admin")),
                                         "client-key": str(pki.key("admin"))}}]}))
    addr = ("127.0.0.1", _free_udp_port())
    proc = subprocess.Popen([sys.executable, "-m", "kubetune_devcluster.dns", f"--listen={addr[0]}:{addr[1]}",
                             f"--kubeconfig={kubeconfig}"], stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: probe(addr, "kubernetes.default.svc.cluster.local", 0.5)[1], timeout=30,
                   what="the DNS server to answer")
        yield addr
    finally:
        proc.terminate()
        proc.wait(10)


def _pod(ns: str, index: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"train-{index}-x", "namespace": ns, "labels": {"app": "train"}},
            "spec": {"hostname": f"train-{index}", "subdomain": "train",
                     "containers": [{"name": "c", "image": "busybox"}]}}


def test_headless_service_pods_by_hostname(cluster: Cluster, namespace: str, dns: tuple[str, int]) -> None:
    ns = namespace
    cluster.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "train", "namespace": ns},
                   "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": {"app": "train"},
                            "ports": [{"port": 29500}]}},
                  _pod(ns, 0), _pod(ns, 1))

    def ips() -> dict[str, str] | None:
        pods = cluster.get("pods", "-n", ns, "-l", "app=train")["items"]
        found = {p["spec"]["hostname"]: p["status"].get("podIP") for p in pods}
        return found if len(found) == 2 and all(found.values()) else None

    pod_ips = wait_until(ips, timeout=60, what="both pods with an IP")
    name0 = f"train-0.train.{ns}.svc.cluster.local"
    # the slice controller publishes the hostnames a moment after the IPs
    assert wait_until(lambda: probe(dns, name0)[1], timeout=30, what=name0) == [pod_ips["train-0"]]
    assert probe(dns, f"train-1.train.{ns}.svc.cluster.local") == (NOERROR, [pod_ips["train-1"]])
    assert probe(dns, f"train.{ns}.svc.cluster.local") == (NOERROR, sorted(pod_ips.values(),
                                                                         key=lambda a: [int(x) for x in a.split(".")]))
    kubernetes = cluster.get("service", "kubernetes", "-n", "default")["spec"]["clusterIP"]
    assert probe(dns, "kubernetes.default.svc.cluster.local") == (NOERROR, [kubernetes])
    for foreign in ("huggingface.co", f"train-0.train.{ns}.svc.cluster.local.example.com"):
        assert probe(dns, foreign) == (NXDOMAIN, [])
    # a pod gone is a name gone
    cluster.kubectl("-n", ns, "delete", "pod", "train-1-x", "--grace-period=0", "--force", check=True)
    wait_until(lambda: probe(dns, f"train-1.train.{ns}.svc.cluster.local")[0] == NXDOMAIN, timeout=30,
               what="train-1's name gone")
    assert probe(dns, name0) == (NOERROR, [pod_ips["train-0"]])
