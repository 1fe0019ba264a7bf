"""A real node for the local cluster: containerd v2 + runc, CNI bridge, kubelet, kube-proxy and the
cluster DNS (:mod:`kubetune_devcluster.dns`).

Everything here is configuration (plain data and files); :mod:`kubetune_devcluster.cluster` starts
the processes inside the cluster's network namespace (:mod:`kubetune_devcluster.netns`).

This kernel mounts cgroups v1 (hybrid) and PID 1 is not systemd: the kubelet runs with the cgroupfs
driver and ``failCgroupV1: false`` (Kubernetes >= 1.35 refuses v1 otherwise), containerd's runc with
``SystemdCgroup = false``. The VM's root lacks CAP_SYS_RESOURCE, so runc cannot lower a process'
``oom_score_adj``: containerd must clamp it (``restrict_oom_score_adj``), or every sandbox fails with
"can't get final child's PID from pipe: EOF".
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .netns import Netns

NODE_NAME = "kubetune-node-0"
NODE_IP = "10.213.0.1"  # on a device inside the cluster's own network namespace
POD_SUBNET = "10.88.0.0/24"  # the CNI bridge's addresses (kwok's fake pods use 10.244.0.0/16)
CLUSTER_CIDR = "10.88.0.0/16"
CLUSTER_DOMAIN = "cluster.local"  # kubetune_devcluster.dns answers for it
NODE_LABEL = "kubetune.io/real-node"  # the real node carries it ("true"): tests pin pods with it
K8S_NAMESPACE = "k8s.io"  # containerd namespace the CRI plugin uses


def pause_image_ref(version: str) -> str:
    return f"registry.k8s.io/pause:{version}"


@dataclass(frozen=True)
class NodePaths:
    """Where the node keeps its state. Sockets live under a short /run path (108-byte limit)."""

    root: Path  # <workdir>/node
    run: Path  # /run/kubetune-<id>

    @classmethod
    def for_workdir(cls, workdir: Path) -> NodePaths:
        tag = hashlib.sha256(str(workdir).encode()).hexdigest()[:10]
        return cls(workdir / "node", Path("/run") / f"kubetune-{tag}")

    @property
    def containerd_socket(self) -> Path:
        return self.run / "containerd.sock"

    @property
    def containerd_root(self) -> Path:
        return self.root / "containerd"

    @property
    def containerd_state(self) -> Path:
        return self.run / "containerd-state"

    @property
    def containerd_config(self) -> Path:
        return self.root / "containerd.toml"

    @property
    def cni_conf_dir(self) -> Path:
        return self.root / "cni"

    @property
    def kubelet_root(self) -> Path:
        return self.root / "kubelet"

    @property
    def kubelet_config(self) -> Path:
        return self.root / "kubelet.yaml"

    @property
    def kube_proxy_config(self) -> Path:
        return self.root / "kube-proxy.yaml"

    @property
    def images(self) -> Path:
        return self.root / "images"

    def make(self) -> None:
        for d in (self.root, self.run, self.containerd_root, self.cni_conf_dir, self.kubelet_root, self.images):
            d.mkdir(parents=True, exist_ok=True)


def containerd_toml(paths: NodePaths, bin_dir: Path, sandbox_image: str) -> str:
    """containerd v2 configuration (version 3) for one CRI node."""
    return f"""version = 3
root = "{paths.containerd_root}"
state = "{paths.containerd_state}"

[grpc]
  address = "{paths.containerd_socket}"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{sandbox_image}"

[plugins."io.containerd.cri.v1.runtime"]
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_unprivileged_ports = true
  enable_unprivileged_icmp = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "{bin_dir / 'runc'}"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{bin_dir / 'cni'}"]
    conf_dir = "{paths.cni_conf_dir}"

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"""


def cni_conflist() -> dict[str, Any]:
    """One bridge, addresses from POD_SUBNET, no masquerade (nothing leaves the namespace)."""
    return {
        "cniVersion": "1.0.0",
        "name": "kubetune",
        "plugins": [{
            "type": "bridge",
            "bridge": "kt-cni0",
            "isGateway": True,
            "ipMasq": False,
            "hairpinMode": True,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": POD_SUBNET}]],
                     "routes": [{"dst": "0.0.0.0/0"}]},
        }],
    }


def kubelet_configuration(paths: NodePaths, ca: Path, serving_cert: Path, serving_key: Path,
                          healthz_port: int) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "failCgroupV1": False,  # this kernel mounts cgroups v1 (hybrid)
        "cgroupDriver": "cgroupfs",  # PID 1 is not systemd
        "containerRuntimeEndpoint": f"unix://{paths.containerd_socket}",
        "address": NODE_IP,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "tlsCertFile": str(serving_cert),
        "tlsPrivateKeyFile": str(serving_key),
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(ca)}},
        "authorization": {"mode": "Webhook"},
        # A test machine, not a production node: no disk-pressure evictions, no swap check, no image GC
        # of the images the tests loaded, no per-pod ephemeral-storage accounting.
        "evictionHard": {},
        "failSwapOn": False,
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "localStorageCapacityIsolation": False,
        # ClusterFirst pods ask the cluster DNS (dns.py, on the node's address) and nothing else: no
        # host resolv.conf is merged in, and that server forwards nothing.
        "resolvConf": "",
        "clusterDNS": [NODE_IP],
        "clusterDomain": CLUSTER_DOMAIN,
        "serializeImagePulls": False,
        "maxPods": 30,
        "shutdownGracePeriod": "0s",
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
    }


def kube_proxy_configuration(kubeconfig: Path, healthz_port: int, metrics_port: int) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": NODE_NAME,
        "mode": "iptables",
        "clusterCIDR": CLUSTER_CIDR,
        "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        # conntrack limits are global, not per namespace: leave the host's alone.
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
    }


def docker_archive(out: Path, ref: str, files: dict[str, tuple[bytes, int]], config: dict[str, Any]) -> Path:
    """A one-layer image as a docker-archive tar (what `ctr images import` takes).
    `files`: path in the image -> (content, mode)."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as t:
        for name, (data, mode) in sorted(files.items()):
            info = tarfile.TarInfo(name.lstrip("/"))
            info.size, info.mode = len(data), mode
            t.addfile(info, io.BytesIO(data))
    layer_bytes = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    image_config = {"architecture": "amd64", "os": "linux", "config": config,
                    "rootfs": {"type": "layers", "diff_ids": [diff_id]}}
    config_bytes = json.dumps(image_config, sort_keys=True).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    manifest = [{"Config": config_name, "RepoTags": [ref], "Layers": ["layer.tar"]}]
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w") as t:
        for name, data in (("layer.tar", layer_bytes), (config_name, config_bytes),
                           ("manifest.json", json.dumps(manifest).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return out


def pause_archive(pause_binary: Path, out: Path, ref: str) -> Path:
    return docker_archive(out, ref, {"pause": (pause_binary.read_bytes(), 0o755)},
                          {"Entrypoint": ["/pause"], "User": "65535:65535"})


def import_image(ctr: Path, socket: Path, archive: Path) -> None:
    """Load a docker-archive (or OCI archive) into the node's containerd, where the kubelet sees it."""
    # The unpacked snapshot is what containers run from; the layer blobs would only double the disk
    # a 6 GB trainer image takes, so the garbage collector may drop them.
    proc = subprocess.run([str(ctr), "--address", str(socket), "--namespace", K8S_NAMESPACE, "images", "import",
                           "--local", "--discard-unpacked-layers", str(archive)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ctr images import {archive}: {proc.stderr.strip() or proc.stdout.strip()}")


CGROUP_ROOT = Path("/sys/fs/cgroup")


def _pod_cgroups() -> list[Path]:
    """Every cgroup the kubelet made for pods (cgroupfs driver: `kubepods` under each hierarchy),
    deepest first."""
    found: list[Path] = []
    for hierarchy in CGROUP_ROOT.iterdir():
        top = hierarchy / "kubepods"
        if top.is_dir():
            found += [Path(d) for d, _, _ in os.walk(top)]
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def kill_pods(netns: Netns) -> None:
    """SIGKILL every pod process (by the kubelet's cgroups) and every process in the cluster's
    namespace other than the control plane's own (containerd shims)."""
    for cg in _pod_cgroups():
        with contextlib.suppress(OSError):
            for pid in (cg / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
    if netns.exists():
        out = subprocess.run(["ip", "netns", "pids", netns.name], capture_output=True, text=True).stdout
        for pid in out.split():
            with contextlib.suppress(OSError, ValueError):
                if "containerd-shim" in os.readlink(f"/proc/{pid}/exe"):
                    os.kill(int(pid), signal.SIGKILL)


def _mountpoints() -> list[str]:
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as f:
        return [line.split()[4].replace("\\040", " ") for line in f]
    return []


def clean_up(netns: Netns, paths: NodePaths) -> None:
    """After the node's processes are gone: unmount what the kubelet and containerd mounted
    (volumes, rootfs overlays, pod network namespaces), remove the pods' cgroups and the network
    namespace. Best effort; nothing here may fail a stop."""
    for _ in range(50):  # killed processes leave their cgroups a moment later
        if not any((cg / "cgroup.procs").read_text().strip() for cg in _pod_cgroups()
                   if (cg / "cgroup.procs").exists()):
            break
        time.sleep(0.1)
    roots = (str(paths.root) + "/", str(paths.run) + "/")
    mounts = [p for p in _mountpoints() if p.startswith(roots)]
    for point in sorted(set(mounts), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True)
    for cg in _pod_cgroups():
        with contextlib.suppress(OSError):
            cg.rmdir()
    with contextlib.suppress(Exception):
        netns.delete()
    # The node's image store (GBs: the trainer image) is not reused by a later start. Removed only
    # when nothing is mounted below it any more (a volume left mounted would be deleted through it).
    for path in (paths.run, paths.containerd_root):
        if not any(p.startswith(str(path) + "/") for p in _mountpoints()):
            subprocess.run(["rm", "-rf", "--one-file-system", str(path)], capture_output=True)
