"""A network namespace for the local cluster with a real node, and a port forwarder into it.

Why a namespace: the kubelet refuses a loopback node IP, pods need addresses, and the API server must
reach pods (admission webhooks behind a Service). Giving the whole cluster (etcd, API server,
controllers, kubelet, containerd, kube-proxy and the pods' bridge) one namespace of its own keeps every
packet inside it: the namespace has a loopback, a veth pair whose both ends stay inside it (one holds the node's address
and the default route; what it sends reaches the other end, which drops it: this kernel has no
dummy device), and no link to any other namespace. The
only way in is :class:`Forwarder`, which accepts on 127.0.0.1 of the caller's namespace and connects
to 127.0.0.1 inside the cluster's (for kubectl, helm and the tests).

Components are started inside with :func:`enter` in the child between fork and exec (``setns``, not
``ip netns exec``, which would also remount /sys and hide the cgroup hierarchy the kubelet needs).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import selectors
import socket
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")
NODE_DEVICE = "kt-node"
SINK_DEVICE = "kt-sink"  # NODE_DEVICE's peer: where packets for no known address end

T = TypeVar("T")


class NetnsError(RuntimeError):
    pass


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


def enter(path: str | os.PathLike[str]) -> None:
    """Move the calling thread (after fork: the whole child) into the namespace at `path`."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Netns:
    """A named network namespace (``ip netns``) with the node's address on a device of its own."""

    name: str
    node_ip: str

    @property
    def path(self) -> Path:
        return NETNS_DIR / self.name

    def exists(self) -> bool:
        return self.path.exists()

    def create(self) -> None:
        """Create it afresh (an old one of the same name is deleted first)."""
        self.delete()
        _ip("netns", "add", self.name)
        _ip("-n", self.name, "link", "set", "lo", "up")
        _ip("-n", self.name, "link", "add", NODE_DEVICE, "type", "veth", "peer", "name", SINK_DEVICE)
        _ip("-n", self.name, "addr", "add", f"{self.node_ip}/32", "dev", NODE_DEVICE)
        _ip("-n", self.name, "link", "set", SINK_DEVICE, "up")
        _ip("-n", self.name, "link", "set", NODE_DEVICE, "up")
        # Service VIPs need a route to be DNAT-ed at all; this one ends at the sink.
        _ip("-n", self.name, "route", "add", "default", "dev", NODE_DEVICE)

    def delete(self) -> None:
        if self.exists():
            _ip("netns", "delete", self.name)

    def preexec(self) -> Callable[[], None]:
        path = str(self.path)
        return lambda: enter(path)

    def call(self, fn: Callable[[], T]) -> T:
        """Run `fn` in a thread that has joined the namespace (sockets it opens live there)."""
        box: dict[str, object] = {}

        def target() -> None:
            try:
                enter(self.path)
                box["value"] = fn()
            except BaseException as exc:  # handed back to the caller
                box["error"] = exc

        t = threading.Thread(target=target, name=f"netns-{self.name}", daemon=True)
        t.start()
        t.join()
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        return box["value"]  # type: ignore[return-value]


class Forwarder:
    """TCP from `listen` (this namespace) to `target` inside the namespace at `netns_path`."""

    def __init__(self, netns_path: str, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.netns_path, self.listen, self.target = netns_path, listen, target
        self._dialer = _Dialer(netns_path)

    def serve_forever(self) -> None:
        server = socket.create_server(self.listen, reuse_port=False)
        with server:
            while True:
                client, _ = server.accept()
                threading.Thread(target=self._pipe, args=(client,), daemon=True).start()

    def _pipe(self, client: socket.socket) -> None:
        with contextlib.ExitStack() as stack:
            stack.enter_context(client)
            try:
                upstream = self._dialer.dial(self.target)
            except OSError:
                return
            stack.enter_context(upstream)
            _splice(client, upstream)


class _Dialer:
    """One thread inside the namespace opens every outgoing connection (setns is per thread)."""

    def __init__(self, netns_path: str) -> None:
        self._requests: list[tuple[tuple[str, int], threading.Event, dict[str, object]]] = []
        self._cv = threading.Condition()
        threading.Thread(target=self._run, args=(netns_path,), name="netns-dialer", daemon=True).start()

    def _run(self, netns_path: str) -> None:
        enter(netns_path)
        while True:
            with self._cv:
                while not self._requests:
                    self._cv.wait()
                addr, done, box = self._requests.pop(0)
            try:
                box["sock"] = socket.create_connection(addr, timeout=10)
            except OSError as exc:
                box["error"] = exc
            done.set()

    def dial(self, addr: tuple[str, int]) -> socket.socket:
        done, box = threading.Event(), {}  # type: ignore[var-annotated]
        with self._cv:
            self._requests.append((addr, done, box))
            self._cv.notify()
        done.wait()
        if "error" in box:
            raise box["error"]  # type: ignore[misc]
        sock: socket.socket = box["sock"]  # type: ignore[assignment]
        sock.settimeout(None)
        return sock


def _splice(a: socket.socket, b: socket.socket) -> None:
    sel = selectors.DefaultSelector()
    sel.register(a, selectors.EVENT_READ, b)
    sel.register(b, selectors.EVENT_READ, a)
    open_ends = 2
    while open_ends:
        for key, _ in sel.select():
            src: socket.socket = key.fileobj  # type: ignore[assignment]
            dst: socket.socket = key.data
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                sel.unregister(src)
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
                open_ends -= 1
                continue
            try:
                dst.sendall(data)
            except OSError:
                return


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    """``python -m kubetune_devcluster.netns --netns PATH --listen HOST:PORT --target HOST:PORT``"""
    p = argparse.ArgumentParser(prog="kubetune_devcluster.netns", description=main.__doc__)
    p.add_argument("--netns", required=True, help="path of the network namespace (/run/netns/NAME)")
    p.add_argument("--listen", required=True, type=_hostport, help="HOST:PORT to accept on, here")
    p.add_argument("--target", required=True, type=_hostport, help="HOST:PORT to connect to, inside")
    args = p.parse_args(argv)
    Forwarder(args.netns, args.listen, args.target).serve_forever()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
