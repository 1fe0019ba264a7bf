"""Start / stop the local control plane: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok (fake GPU nodes), all on loopback, all real Kubernetes code.

With `real_node=True` the cluster also gets a real node (containerd + runc, a CNI bridge, kubelet,
kube-proxy) and then runs, whole, inside a network namespace of its own (netns.py explains why);
a forwarder makes its API server reachable on this namespace's 127.0.0.1."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import dns as dns_mod
from . import node as node_mod
from . import pki as pki_mod
from .binaries import Binaries, ensure_binaries, read_versions
from .netns import Netns
from .nodes import KWOK_NODE_ANNOTATION, KWOK_NODE_ANNOTATION_VALUE, default_nodes

STATE_FILE = "cluster.json"
# Start order; stop() goes the other way round. The last six only with a real node.
COMPONENTS = ("etcd", "kube-apiserver", "apiserver-forwarder", "kube-controller-manager", "kube-scheduler",
              "kwok", "cluster-dns", "containerd", "kubelet", "kube-proxy")
PYTHON_COMPONENTS = ("apiserver-forwarder", "cluster-dns")  # run by this Python
STAGES_FILE = Path(__file__).with_name("stages.yaml")
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
CONTEXT = "kubetune-dev"


class ClusterError(RuntimeError):
    pass


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _preexec(die_with_parent: bool, netns: Netns | None) -> Any:
    """What runs in a component's child between fork and exec: join the cluster's network
    namespace (real node) and/or die with the parent."""
    enter = netns.preexec() if netns is not None else None
    if not die_with_parent and enter is None:
        return None

    def run() -> None:
        if enter is not None:
            enter()
        if die_with_parent:
            _die_with_parent()

    return run


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _executable(component: str) -> str:
    """The program a component's pid runs (the forwarder and the cluster DNS are this Python)."""
    return os.path.realpath(sys.executable) if component in PYTHON_COMPONENTS else component


def _pid_runs(pid: int, binary: str) -> bool:
    """pid is alive and still runs `binary` (guards against recycled pids)."""
    if not _pid_alive(pid):
        return False
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return True  # cannot tell (other user / no /proc): trust the pid file
    return os.path.basename(exe.removesuffix(" (deleted)")) == os.path.basename(binary)


def _write_kubeconfig(path: Path, server: str, pki: pki_mod.Pki, client: str, embed: bool) -> None:
    if embed:
        cluster = {"server": server, "certificate-authority-data": _b64(pki.ca_crt)}
        user = {"client-certificate-data": _b64(pki.cert(client)), "client-key-data": _b64(pki.key(client))}
    else:
        cluster = {"server": server, "certificate-authority": str(pki.ca_crt)}
        user = {"client-certificate": str(pki.cert(client)), "client-key": str(pki.key(client))}
    cfg = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CONTEXT, "cluster": cluster}],
        "users": [{"name": f"{CONTEXT}-{client}", "user": user}],
        "contexts": [{"name": CONTEXT, "context": {"cluster": CONTEXT, "user": f"{CONTEXT}-{client}"}}],
        "current-context": CONTEXT,
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)


def _b64(path: Path) -> str:
    import base64

    return base64.b64encode(path.read_bytes()).decode()


@dataclass
class Cluster:
    """A running local control plane. `kubeconfig` is an admin (system:masters) kubeconfig."""

    workdir: Path
    server: str
    ports: dict[str, int]
    pids: dict[str, int]
    bin_dir: Path
    startup_seconds: float = 0.0
    netns: Netns | None = None  # set when the cluster has a real node (and lives in this namespace)
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict, repr=False)

    # ---- paths -------------------------------------------------------------------------
    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def binaries(self) -> Binaries:
        return Binaries(self.bin_dir)

    @property
    def kubectl_path(self) -> Path:
        return self.binaries.kubectl

    @property
    def helm(self) -> Path:
        return self.binaries.helm

    @property
    def pki(self) -> pki_mod.Pki:
        return pki_mod.Pki(self.workdir / "pki")

    @property
    def real_node(self) -> bool:
        return self.netns is not None

    @property
    def node_paths(self) -> node_mod.NodePaths:
        return node_mod.NodePaths.for_workdir(self.workdir)

    def load_image(self, archive: str | os.PathLike[str]) -> None:
        """Load an image archive (docker-archive or OCI) into the real node's containerd."""
        if not self.real_node:
            raise ClusterError("this cluster has no real node to load images into (start it with real_node=True)")
        node_mod.import_image(self.binaries.ctr, self.node_paths.containerd_socket, Path(archive))

    def log_path(self, component: str) -> Path:
        return self.workdir / "logs" / f"{component}.log"

    def env(self) -> dict[str, str]:
        """os.environ plus KUBECONFIG and PATH with kubectl/helm first."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        return env

    # ---- helpers -----------------------------------------------------------------------
    def kubectl(
        self, *args: str, input: str | None = None, check: bool = False, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster; returns the CompletedProcess (text, captured)."""
        proc = subprocess.run(
            [str(self.kubectl_path), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def apply(self, *objects: dict[str, Any], server_side: bool = False) -> None:
        """kubectl apply the given manifests (dicts)."""
        doc = {"apiVersion": "v1", "kind": "List", "items": list(objects)}
        args = ["apply", "-f", "-"] + (["--server-side", "--force-conflicts"] if server_side else [])
        self.kubectl(*args, input=json.dumps(doc), check=True)

    def get(self, *args: str) -> dict[str, Any]:
        """kubectl get ... -o json, parsed."""
        return json.loads(self.kubectl("get", *args, "-o", "json", check=True).stdout)

    def api_get(self, path: str, timeout: float = 5) -> tuple[int, bytes]:
        """GET an API path with the admin client certificate; returns (status, body)."""
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_crt))
        ctx.load_cert_chain(str(self.pki.cert("admin")), str(self.pki.key("admin")))
        try:
            with urllib.request.urlopen(self.server + path, context=ctx, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def running(self) -> dict[str, bool]:
        return {n: _pid_runs(pid, _executable(n)) for n, pid in self.pids.items()}

    def check_alive(self) -> None:
        dead = [n for n, ok in self.running().items() if not ok]
        if dead:
            tails = "\n".join(f"--- {n}:\n{_tail(self.log_path(n))}" for n in dead)
            raise ClusterError(f"control-plane component(s) exited: {dead}\n{tails}")

    # ---- lifecycle ---------------------------------------------------------------------
    def _save(self) -> None:
        state = {
            "server": self.server,
            "ports": self.ports,
            "pids": self.pids,
            "bin_dir": str(self.bin_dir),
            "kubeconfig": str(self.kubeconfig),
        }
        if self.netns is not None:
            state["netns"] = {"name": self.netns.name, "node_ip": self.netns.node_ip}
            state["containerd_socket"] = str(self.node_paths.containerd_socket)
            state["node_name"] = node_mod.NODE_NAME
        (self.workdir / STATE_FILE).write_text(json.dumps(state, indent=2))
        piddir = self.workdir / "pids"
        piddir.mkdir(exist_ok=True)
        for name, pid in self.pids.items():
            (piddir / f"{name}.pid").write_text(f"{pid}\n")

    @classmethod
    def attach(cls, workdir: str | os.PathLike[str]) -> Cluster:
        """The cluster recorded in workdir (started by another process, e.g. `up`)."""
        workdir = Path(workdir).resolve()
        state = json.loads((workdir / STATE_FILE).read_text())
        ns = state.get("netns")
        return cls(
            workdir=workdir,
            server=state["server"],
            ports=state["ports"],
            pids={k: int(v) for k, v in state["pids"].items()},
            bin_dir=Path(state["bin_dir"]),
            netns=Netns(ns["name"], ns["node_ip"]) if ns else None,
        )

    def stop(self, timeout: float = 15) -> None:
        """Stop every component (SIGTERM to its process group, SIGKILL after `timeout`); with a
        real node, also its pods, their mounts and the network namespace."""
        if self.netns is not None:
            node_mod.kill_pods(self.netns)
        for name in reversed(COMPONENTS):
            pid = self.pids.get(name)
            if pid is None:
                continue
            proc = self._procs.get(name)
            if proc is None and not _pid_runs(pid, _executable(name)):
                continue
            _kill_group(pid, signal.SIGTERM)
            deadline = time.monotonic() + (timeout if name in ("etcd", "kube-apiserver") else 5)
            while time.monotonic() < deadline:
                if proc is not None and proc.poll() is not None:
                    break
                if proc is None and not _pid_alive(pid):
                    break
                time.sleep(0.05)
            _kill_group(pid, signal.SIGKILL)  # the group: anything the component forked
            if proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
        self._procs.clear()
        if self.netns is not None:
            node_mod.clean_up(self.netns, self.node_paths)
        with contextlib.suppress(FileNotFoundError):
            (self.workdir / STATE_FILE).unlink()
        shutil.rmtree(self.workdir / "pids", ignore_errors=True)
        shutil.rmtree(self.workdir / "argv", ignore_errors=True)

    def restart(self, component: str, timeout: float = 60) -> float:
        """Stop one component (SIGTERM to its process group, SIGKILL after 15 s) and start it again
        with the command line it was started with, its log and working folder (the soak test restarts the API server
        mid-flight; etcd keeps the state). Returns the seconds it was away (kube-apiserver: until
        /readyz answers again)."""
        pid = self.pids[component]
        argv = json.loads((self.workdir / "argv" / f"{component}.json").read_text())
        env = dict(os.environ, PATH=f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
        started = time.monotonic()
        _kill_group(pid, signal.SIGTERM)
        proc = self._procs.get(component)
        deadline = time.monotonic() + 15
        while (proc.poll() is None if proc is not None else _pid_alive(pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        _kill_group(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10  # gone, its ports free, before the new one binds them
        while (proc.poll() is None if proc is not None else _pid_alive(pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        for attempt in range(10):  # its port may still be held a moment (the old listener, a client's source port)
            with open(self.log_path(component), "ab") as log:
                new = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                       cwd=self.workdir, start_new_session=True,
                                       preexec_fn=_preexec(proc is not None, self.netns),  # as it was started
                                       env=env)
            self.pids[component] = new.pid
            self._procs[component] = new
            self._save()
            try:
                new.wait(timeout=3)  # exited at once: try again
            except subprocess.TimeoutExpired:
                break
            time.sleep(1 + attempt)
        if component == "kube-apiserver":
            _wait("kube-apiserver /readyz", lambda: self.api_get("/readyz")[0] == 200, timeout, self)
        return time.monotonic() - started

    def stop_and_report(self) -> None:
        """stop(), first saying why when a component died meanwhile (the end of a test session)."""
        try:
            self.check_alive()
        except ClusterError as e:
            print(f"\n{e}", file=sys.stderr)
            print_logs(self)
        self.stop()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)  # each component is its own session / process-group leader
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _tail(path: Path, n: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _wait(
    what: str, probe: Any, timeout: float, cluster: Cluster | None = None, interval: float = 0.2
) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            result = probe()
        except Exception as e:
            result, last = None, e
        if result:
            return result
        if cluster is not None:
            cluster.check_alive()
        time.sleep(interval)
    raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last!r})")


def _http_ok(url: str, expect: bytes | None = None, ctx: ssl.SSLContext | None = None) -> bool:
    with urllib.request.urlopen(url, context=ctx, timeout=2) as r:
        body = r.read()
        return r.status == 200 and (expect is None or expect in body)


def _insecure_ctx() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def start(
    workdir: str | os.PathLike[str],
    *,
    nodes: Iterable[dict[str, Any]] | None = None,
    binaries: Binaries | None = None,
    detach: bool = False,
    timeout: float = 120,
    verbosity: int = 1,
    real_node: bool = False,
) -> Cluster:
    """Start a fresh control plane in `workdir` and return once it is usable.

    Usable means: /readyz OK, the fake nodes Ready and schedulable (no not-ready taint),
    the `default` service account exists, controller-manager and scheduler healthy.

    real_node=True adds a real kubelet node (containerd, CNI, kube-proxy) in the cluster's own
    network namespace; the fake CPU node is then left out, so CPU pods land on the real node.

    detach=False: components die with the calling process (PR_SET_PDEATHSIG), so a
    killed test run leaves no orphans. detach=True: they outlive it (`up`/`down`).
    """
    bins = binaries or ensure_binaries()
    workdir = _clear_workdir(Path(workdir).resolve())
    t0 = time.monotonic()
    boot = _Boot.prepare(workdir, bins, detach=detach, timeout=timeout, verbosity=verbosity, real_node=real_node)
    try:
        boot.etcd()
        boot.kube_apiserver()
        boot.kube_controller_manager()
        boot.kube_scheduler()
        boot.kwok()
        if nodes is None:
            nodes = default_nodes(cpu_node=not real_node)
        names = boot.register_nodes(nodes)
        if real_node:
            boot.cluster_dns()
            boot.containerd()
            boot.kubelet()
            boot.kube_proxy()
            names.append(node_mod.NODE_NAME)
        boot.wait_ready(names)
        if real_node:
            boot.wait_cluster_dns()
        boot.cluster.startup_seconds = time.monotonic() - t0
        return boot.cluster
    except BaseException:
        boot.cluster.stop()
        raise


def _clear_workdir(workdir: Path) -> Path:
    """Create `workdir`, refuse one whose cluster still runs, drop what an earlier one left."""
    workdir.mkdir(parents=True, exist_ok=True)
    if (workdir / STATE_FILE).exists():
        old = Cluster.attach(workdir)
        if any(old.running().values()):
            raise ClusterError(f"a cluster is already running in {workdir} (pids {old.pids}); stop it first")
    for sub in ("pki", "etcd", "logs", "pids", "config", "node"):
        shutil.rmtree(workdir / sub, ignore_errors=True)
    for f in ("kubeconfig", STATE_FILE):
        with contextlib.suppress(FileNotFoundError):
            (workdir / f).unlink()
    (workdir / "logs").mkdir()
    (workdir / "config").mkdir()
    return workdir


@dataclass
class _Boot:
    """One start(): the cluster being brought up, one method per step."""

    cluster: Cluster
    bins: Binaries
    pki: pki_mod.Pki
    detach: bool
    timeout: float
    verbosity: int

    @classmethod
    def prepare(cls, workdir: Path, bins: Binaries, *, detach: bool, timeout: float, verbosity: int,
                real_node: bool = False) -> _Boot:
        """Certificates, free ports, kubeconfigs (admin + one per component) and kwok's stages;
        with a real node, its network namespace too."""
        netns = None
        if real_node:
            netns = Netns(f"kubetune-{node_mod.NodePaths.for_workdir(workdir).run.name[9:]}", node_mod.NODE_IP)
            netns.create()
        pki = pki_mod.generate(workdir / "pki", node_ip=netns.node_ip if netns else None,
                               node_name=node_mod.NODE_NAME if netns else None)
        names = ["etcd", "etcd-peer", "kube-apiserver", "kube-controller-manager", "kube-scheduler"]
        if real_node:
            names += ["kubelet-healthz", "kube-proxy-healthz", "kube-proxy-metrics"]
        ports = dict(zip(names, _free_ports(len(names)), strict=True))
        # With a real node this is the forwarder's address; inside the namespace the same
        # address reaches the API server itself.
        server = f"https://127.0.0.1:{ports['kube-apiserver']}"
        cluster = Cluster(workdir=workdir, server=server, ports=ports, pids={}, bin_dir=bins.bin_dir, netns=netns)
        cfg = workdir / "config"
        _write_kubeconfig(workdir / "kubeconfig", server, pki, "admin", embed=True)
        clients = ["kube-controller-manager", "kube-scheduler", "kwok"] + (["kubelet", "kube-proxy"] if real_node else [])
        for client in clients:
            _write_kubeconfig(cfg / f"{client}.kubeconfig", server, pki, client, embed=False)
        shutil.copyfile(STAGES_FILE, cfg / "kwok-stages.yaml")
        return cls(cluster, bins, pki, detach, timeout, verbosity)

    def _config(self, name: str) -> Path:
        return self.cluster.workdir / "config" / name

    def _spawn(self, name: str, argv: Sequence[str], *, in_netns: bool = True) -> None:
        """Start one component (its own session, output to logs/NAME.log) and record its pid;
        with a real node, inside the cluster's network namespace (unless `in_netns` is False)."""
        cluster = self.cluster
        # The node's tools (iptables, the containerd shim, runc, mount helpers) are found on PATH.
        env = dict(os.environ, PATH=f"{self.bins.bin_dir}{os.pathsep}/usr/sbin{os.pathsep}/sbin{os.pathsep}"
                   f"{os.environ.get('PATH', '')}")
        netns = cluster.netns if in_netns else None
        log = open(cluster.log_path(name), "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cluster.workdir,
                start_new_session=True,
                preexec_fn=_preexec(not self.detach, netns),
                env=env,
            )
        finally:
            log.close()
        cluster.pids[name] = proc.pid
        argv_dir = cluster.workdir / "argv"  # Cluster.restart starts it again the same way
        argv_dir.mkdir(exist_ok=True)
        (argv_dir / f"{name}.json").write_text(json.dumps(list(argv)))
        if not self.detach:
            cluster._procs[name] = proc
        cluster._save()

    def _until(self, what: str, probe: Any, timeout: float | None = None) -> None:
        _wait(what, probe, self.timeout if timeout is None else timeout, self.cluster)

    def _probe(self, fn: Any) -> Any:
        """`fn()` where the components listen: inside the cluster's namespace with a real node."""
        netns = self.cluster.netns
        return (lambda: netns.call(fn)) if netns is not None else fn

    def _wait_healthz(self, component: str, port_name: str | None = None, scheme: str = "https") -> None:
        url = f"{scheme}://127.0.0.1:{self.cluster.ports[port_name or component]}/healthz"
        insecure = _insecure_ctx() if scheme == "https" else None
        self._until(f"{component} /healthz", self._probe(lambda: _http_ok(url, b"ok", insecure)))

    def _common(self) -> list[str]:
        """Flags that kube-controller-manager and kube-scheduler share."""
        return ["--bind-address=127.0.0.1", "--leader-elect=false", f"--v={self.verbosity}"]

    def etcd(self) -> None:
        client, peer = self.cluster.ports["etcd"], self.cluster.ports["etcd-peer"]
        self._spawn(
            "etcd",
            [
                str(self.bins.etcd),
                "--name=kubetune-dev",
                f"--data-dir={self.cluster.workdir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{client}",
                f"--advertise-client-urls=http://127.0.0.1:{client}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=kubetune-dev=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync",
                "--quota-backend-bytes=4294967296",
                "--log-level=warn",
            ],
        )
        self._until("etcd /health", self._probe(lambda: _http_ok(f"http://127.0.0.1:{client}/health", b'"true"')), 30)

    def _apiserver_network(self) -> list[str]:
        """Loopback only; with a real node, every address of the cluster's namespace, advertised
        at the node's address so the `kubernetes` Service leads pods to it."""
        netns = self.cluster.netns
        if netns is None:
            return ["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none"]
        pki = self.pki
        return ["--bind-address=0.0.0.0", f"--advertise-address={netns.node_ip}",
                f"--kubelet-client-certificate={pki.cert('apiserver-kubelet-client')}",
                f"--kubelet-client-key={pki.key('apiserver-kubelet-client')}",
                f"--kubelet-certificate-authority={pki.ca_crt}",
                "--kubelet-preferred-address-types=InternalIP"]

    def kube_apiserver(self) -> None:
        pki = self.pki
        self._spawn(
            "kube-apiserver",
            [
                str(self.bins.kube_apiserver),
                f"--etcd-servers=http://127.0.0.1:{self.cluster.ports['etcd']}",
                f"--secure-port={self.cluster.ports['kube-apiserver']}",
                *self._apiserver_network(),
                f"--tls-cert-file={pki.cert('apiserver')}",
                f"--tls-private-key-file={pki.key('apiserver')}",
                f"--client-ca-file={pki.ca_crt}",
                f"--service-account-issuer={SA_ISSUER}",
                f"--service-account-key-file={pki.sa_pub}",
                f"--service-account-signing-key-file={pki.sa_key}",
                f"--service-cluster-ip-range={pki_mod.SERVICE_CLUSTER_IP_RANGE}",
                "--authorization-mode=Node,RBAC",
                # Added to the default plugins (which already include PodSecurity and both
                # admission-webhook plugins); listed so that they are on whatever the defaults.
                "--enable-admission-plugins=NodeRestriction,PodSecurity,MutatingAdmissionWebhook,"
                "ValidatingAdmissionWebhook,ValidatingAdmissionPolicy",
                "--allow-privileged=true",
                f"--requestheader-client-ca-file={pki.front_proxy_ca_crt}",
                "--requestheader-allowed-names=front-proxy-client",
                "--requestheader-username-headers=X-Remote-User",
                "--requestheader-group-headers=X-Remote-Group",
                "--requestheader-extra-headers-prefix=X-Remote-Extra-",
                f"--proxy-client-cert-file={pki.cert('front-proxy-client')}",
                f"--proxy-client-key-file={pki.key('front-proxy-client')}",
                "--profiling=false",
                f"--v={self.verbosity}",
            ],
        )
        if self.cluster.netns is not None:
            port = self.cluster.ports["kube-apiserver"]
            self._spawn("apiserver-forwarder", [
                sys.executable, "-m", "kubetune_devcluster.netns", f"--netns={self.cluster.netns.path}",
                f"--listen=127.0.0.1:{port}", f"--target=127.0.0.1:{port}"], in_netns=False)
        self._until("kube-apiserver /readyz", lambda: self.cluster.api_get("/readyz")[0] == 200)

    def kube_controller_manager(self) -> None:
        pki, kubeconfig = self.pki, self._config("kube-controller-manager.kubeconfig")
        self._spawn(
            "kube-controller-manager",
            [
                str(self.bins.kube_controller_manager),
                *self._common(),
                f"--secure-port={self.cluster.ports['kube-controller-manager']}",
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--controllers=*",
                "--use-service-account-credentials=true",
                f"--root-ca-file={pki.ca_crt}",
                f"--service-account-private-key-file={pki.sa_key}",
                f"--cluster-signing-cert-file={pki.ca_crt}",
                f"--cluster-signing-key-file={pki.ca_key}",
                f"--service-cluster-ip-range={pki_mod.SERVICE_CLUSTER_IP_RANGE}",
                "--cluster-name=kubetune-dev",
            ],
        )

    def kube_scheduler(self) -> None:
        kubeconfig = self._config("kube-scheduler.kubeconfig")
        self._spawn(
            "kube-scheduler",
            [
                str(self.bins.kube_scheduler),
                *self._common(),
                f"--secure-port={self.cluster.ports['kube-scheduler']}",
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
            ],
        )

    def kwok(self) -> None:
        self._spawn(
            "kwok",
            [
                str(self.bins.kwok),
                f"--kubeconfig={self._config('kwok.kubeconfig')}",
                f"--config={self._config('kwok-stages.yaml')}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}={KWOK_NODE_ANNOTATION_VALUE}",
                "--node-lease-duration-seconds=40",
                "--cidr=10.244.0.1/16",
                "--node-ip=10.0.0.1",
            ],
        )

    # ---- the real node ----------------------------------------------------------------------
    def cluster_dns(self) -> None:
        """The pods' DNS server (kubetune_devcluster.dns) on the node's address, port 53, reading
        Services and EndpointSlices with kube-proxy's identity (system:node-proxier may list them)."""
        assert self.cluster.netns is not None
        self._spawn("cluster-dns", [
            sys.executable, "-m", "kubetune_devcluster.dns", f"--listen={self.cluster.netns.node_ip}:{dns_mod.PORT}",
            f"--kubeconfig={self._config('kube-proxy.kubeconfig')}", f"--domain={node_mod.CLUSTER_DOMAIN}"])

    def wait_cluster_dns(self) -> None:
        """It answers with the `kubernetes` Service's ClusterIP (so it reads the API)."""
        assert self.cluster.netns is not None
        server = (self.cluster.netns.node_ip, dns_mod.PORT)
        name = f"kubernetes.default.svc.{node_mod.CLUSTER_DOMAIN}"
        self._until("the cluster DNS to answer", self._probe(lambda: dns_mod.probe(server, name, 0.5)[1]), 30)

    def containerd(self) -> None:
        """containerd (CRI) with runc and the CNI bridge; the pause image imported and pinned."""
        paths, bins = self.cluster.node_paths, self.bins
        paths.make()
        versions = read_versions()
        sandbox = node_mod.pause_image_ref(versions["PAUSE_VERSION"])
        paths.containerd_config.write_text(node_mod.containerd_toml(paths, bins.bin_dir, sandbox))
        (paths.cni_conf_dir / "10-kubetune.conflist").write_text(json.dumps(node_mod.cni_conflist(), indent=2))
        self._spawn("containerd", [str(bins.containerd), f"--config={paths.containerd_config}",
                                   f"--log-level={'debug' if self.verbosity > 2 else 'warn'}"])
        self._until("containerd's socket", lambda: paths.containerd_socket.exists(), 30)
        archive = node_mod.pause_archive(bins.pause, paths.images / "pause.tar", sandbox)
        self._until("the pause image imported", lambda: node_mod.import_image(bins.ctr, paths.containerd_socket,
                                                                              archive) is None, 30)

    def kubelet(self) -> None:
        paths, pki, c = self.cluster.node_paths, self.pki, self.cluster
        config = node_mod.kubelet_configuration(paths, pki.ca_crt, pki.cert("kubelet-serving"),
                                                pki.key("kubelet-serving"), c.ports["kubelet-healthz"])
        paths.kubelet_config.write_text(yaml.safe_dump(config, sort_keys=False))
        self._spawn("kubelet", [
            str(self.bins.kubelet),
            f"--config={paths.kubelet_config}",
            f"--kubeconfig={self._config('kubelet.kubeconfig')}",
            f"--root-dir={paths.kubelet_root}",
            f"--hostname-override={node_mod.NODE_NAME}",
            f"--node-ip={node_mod.NODE_IP}",
            f"--node-labels={node_mod.NODE_LABEL}=true",
            f"--v={self.verbosity}",
        ])
        self._wait_healthz("kubelet", "kubelet-healthz", scheme="http")

    def kube_proxy(self) -> None:
        paths, c = self.cluster.node_paths, self.cluster
        config = node_mod.kube_proxy_configuration(self._config("kube-proxy.kubeconfig"),
                                                   c.ports["kube-proxy-healthz"], c.ports["kube-proxy-metrics"])
        paths.kube_proxy_config.write_text(yaml.safe_dump(config, sort_keys=False))
        self._spawn("kube-proxy", [str(self.bins.kube_proxy), f"--config={paths.kube_proxy_config}",
                                   f"--v={self.verbosity}"])

    def register_nodes(self, nodes: Iterable[dict[str, Any]]) -> list[str]:
        """Create the fake nodes (kwok takes over those annotated for it); returns their names."""
        node_objs = list(nodes)
        if node_objs:
            self.cluster.apply(*node_objs)
        return [n["metadata"]["name"] for n in node_objs]

    def wait_ready(self, names: list[str]) -> None:
        """Controller-manager and scheduler healthy, the default service account, nodes Ready."""
        self._wait_healthz("kube-controller-manager")
        self._wait_healthz("kube-scheduler")
        self._until(
            "the default service account",
            lambda: self.cluster.api_get("/api/v1/namespaces/default/serviceaccounts/default")[0] == 200,
        )
        self._until(f"nodes {names} Ready and untainted", lambda: _nodes_ready(self.cluster, names))


def _nodes_ready(cluster: Cluster, names: list[str]) -> bool:
    """Every named node exists, is Ready and carries no node.kubernetes.io/ taint."""
    items = {n["metadata"]["name"]: n for n in json.loads(cluster.api_get("/api/v1/nodes")[1])["items"]}
    for name in names:
        n = items.get(name)
        if n is None:
            return False
        ready = any(
            c["type"] == "Ready" and c["status"] == "True" for c in n.get("status", {}).get("conditions", [])
        )
        tainted = any(t["key"].startswith("node.kubernetes.io/") for t in n.get("spec", {}).get("taints", []))
        if not ready or tainted:
            return False
    return True


def print_logs(cluster: Cluster, n: int = 40, file: Any = sys.stderr) -> None:
    for name in COMPONENTS:
        print(f"===== {name} ({cluster.log_path(name)}) =====\n{_tail(cluster.log_path(name), n)}", file=file)


def wait_until(predicate: Any, timeout: float = 30, what: str = "condition", interval: float = 0.25) -> Any:
    """Poll `predicate()` until it returns something truthy (returned); TimeoutError otherwise.
    Exceptions raised by the predicate count as "not yet" (the last one is reported)."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            result = predicate()
            if result:
                return result
        except Exception as e:
            last = e
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"timed out after {timeout}s waiting for {what}"
                + (f" (last error: {last!r})" if last else "")
            )
        time.sleep(interval)
