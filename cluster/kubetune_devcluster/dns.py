"""Cluster DNS for the real node: the A records CoreDNS's `kubernetes` plugin serves, read from the API.

A pod of an Indexed Job finds rank 0 at ``<job>-0.<service>`` (its headless Service is the pods'
``subdomain``); that needs a DNS server at the kubelet's ``clusterDNS``. This one listens on UDP
port 53 of the node's address inside the cluster's network namespace and answers, from Services and
EndpointSlices:

- ``<service>.<ns>.svc.<domain>``: the ClusterIP; for a headless Service, its endpoints' addresses
  (the not-ready ones too when the Service publishes them);
- ``<hostname>.<service>.<ns>.svc.<domain>``: the address of the endpoint with that hostname (the
  EndpointSlice controller sets it for a pod whose ``subdomain`` is the Service);
- a name that is only a prefix of those (``<ns>.svc.<domain>``): no records, but not NXDOMAIN.

Every other name gets NXDOMAIN, and nothing is forwarded anywhere: no packet leaves the machine.
Only A records (other types of a known name: an empty answer), UDP only (the answers are small).

The name → records logic (`records`, `answer`) and the wire format (`parse_query`, `response`) are
pure functions; `serve` is the thin shell: one socket, a table refreshed from the API when it is
older than `max_age` (at once on a miss inside the domain, so a new pod is found without waiting).
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import struct
import sys
import time
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .netns import _hostport

CLUSTER_DOMAIN = "cluster.local"
PORT = 53
TTL = 5  # seconds, CoreDNS's default

TYPE_A, TYPE_ANY, CLASS_IN = 1, 255, 1
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP = 0, 1, 2, 3, 4

Table = Mapping[str, tuple[str, ...]]


# ---- names -> records (pure) ------------------------------------------------------------------

def records(services: Iterable[Mapping[str, Any]], slices: Iterable[Mapping[str, Any]],
            domain: str = CLUSTER_DOMAIN) -> dict[str, tuple[str, ...]]:
    """Every name this cluster serves (lower case, no trailing dot) → its IPv4 addresses, sorted."""
    table: dict[str, set[str]] = {}
    headless: dict[tuple[str, str], bool] = {}  # (ns, name) -> publishNotReadyAddresses
    for svc in services:
        meta, spec = svc.get("metadata") or {}, svc.get("spec") or {}
        ns, name = meta.get("namespace"), meta.get("name")
        if not ns or not name or spec.get("type") == "ExternalName":
            continue
        fqdn = f"{name}.{ns}.svc.{domain}".lower()
        ip = spec.get("clusterIP")
        if ip and ip != "None":
            table[fqdn] = {ip}
        else:
            table.setdefault(fqdn, set())
            headless[(ns, name)] = bool(spec.get("publishNotReadyAddresses"))
    for es in slices:
        if es.get("addressType") != "IPv4":
            continue
        meta = es.get("metadata") or {}
        ns, name = str(meta.get("namespace")), str((meta.get("labels") or {}).get("kubernetes.io/service-name"))
        if (ns, name) not in headless:  # a ClusterIP Service is its VIP; no Service: no name
            continue
        publish = headless[(ns, name)]
        fqdn = f"{name}.{ns}.svc.{domain}".lower()
        for ep in es.get("endpoints") or []:
            ready = (ep.get("conditions") or {}).get("ready")
            if ready is False and not publish:  # unknown (None) counts as ready, as the API says
                continue
            addresses = [a for a in ep.get("addresses") or [] if a]
            table[fqdn].update(addresses)
            if ep.get("hostname") and addresses:
                table.setdefault(f"{ep['hostname']}.{fqdn}".lower(), set()).update(addresses)
    return {k: tuple(sorted(v, key=_ip_key)) for k, v in table.items()}


def _ip_key(ip: str) -> tuple[int, ...]:
    return tuple(int(x) for x in ip.split(".")) if ip.count(".") == 3 else (1 << 9,)


def answer(table: Table, name: str, qtype: int) -> tuple[int, tuple[str, ...]]:
    """(rcode, addresses) for a question: NOERROR with the A records of a known name (none for another
    type, or for a name that only prefixes known ones), NXDOMAIN for everything else."""
    name = name.lower().rstrip(".")
    if name in table:
        return NOERROR, table[name] if qtype in (TYPE_A, TYPE_ANY) else ()
    if name and any(known.endswith("." + name) for known in table):
        return NOERROR, ()
    return NXDOMAIN, ()


# ---- the wire format (RFC 1035), pure -------------------------------------------------------

class BadQuery(ValueError):
    pass


@dataclass(frozen=True)
class Query:
    id: int
    flags: int
    name: str
    qtype: int
    qclass: int
    question: bytes  # the question section as sent, echoed in the response

    @property
    def opcode(self) -> int:
        return (self.flags >> 11) & 0xF


def parse_query(packet: bytes) -> Query:
    """The header and first question of a query; BadQuery when it is not one."""
    if len(packet) < 12:
        raise BadQuery("shorter than a DNS header")
    qid, flags, qdcount = struct.unpack("!HHH", packet[:6])
    if flags & 0x8000:
        raise BadQuery("a response, not a query")
    if qdcount != 1:
        raise BadQuery(f"{qdcount} questions (one expected)")
    labels, i = [], 12
    while True:
        if i >= len(packet):
            raise BadQuery("name runs past the packet")
        n = packet[i]
        if n & 0xC0:
            raise BadQuery("compressed or extended label in a question")
        i += 1
        if n == 0:
            break
        labels.append(packet[i:i + n].decode("ascii", "replace"))
        i += n
    if i + 4 > len(packet):
        raise BadQuery("question without type and class")
    qtype, qclass = struct.unpack("!HH", packet[i:i + 4])
    return Query(qid, flags, ".".join(labels), qtype, qclass, packet[12:i + 4])


def response(query: Query, rcode: int, addresses: Iterable[str] = (), ttl: int = TTL) -> bytes:
    """An authoritative answer (QR, AA; RD echoed; no recursion available) to `query`."""
    answers = b"".join(struct.pack("!HHHIH", 0xC00C, TYPE_A, CLASS_IN, ttl, 4) + socket.inet_aton(ip)
                       for ip in addresses)  # 0xC00C: the name in the question
    flags = 0x8000 | 0x0400 | (query.flags & 0x7900) | (rcode & 0xF)  # opcode and RD copied
    count = len(answers) // 16
    return struct.pack("!HHHHHH", query.id, flags, 1, count, 0, 0) + query.question + answers


def error_response(packet: bytes, rcode: int) -> bytes | None:
    """FORMERR/NOTIMP with the query's id, when at least a header arrived."""
    if len(packet) < 12:
        return None
    qid, flags = struct.unpack("!HH", packet[:4])
    return struct.pack("!HHHHHH", qid, 0x8000 | (flags & 0x7900) | rcode, 0, 0, 0, 0)


def handle(packet: bytes, table: Table | None) -> bytes | None:
    """The reply to one datagram (None: nothing worth answering). `table` None: the API was never
    read, so names inside the domain get SERVFAIL (the resolver retries), not a false NXDOMAIN."""
    try:
        q = parse_query(packet)
    except BadQuery:
        return error_response(packet, FORMERR)
    if q.opcode != 0:
        return error_response(packet, NOTIMP)
    if q.qclass != CLASS_IN:
        return response(q, NXDOMAIN)
    if table is None:
        return response(q, SERVFAIL)
    rcode, addresses = answer(table, q.name, q.qtype)
    return response(q, rcode, addresses)


def query_packet(name: str, qtype: int = TYPE_A, qid: int = 0x4B54) -> bytes:
    """A recursion-desired query for `name` (the start-up probe; tests)."""
    qname = b"".join(bytes([len(p)]) + p.encode("ascii") for p in name.rstrip(".").split(".")) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", qtype, CLASS_IN)


def parse_addresses(reply: bytes) -> tuple[int, list[str]]:
    """(rcode, A addresses) of a reply built by `response` (answers named by pointer)."""
    rcode, ancount = reply[3] & 0xF, struct.unpack("!H", reply[6:8])[0]
    q = parse_query(bytes([reply[0], reply[1], reply[2] & 0x7F]) + reply[3:])
    i, out = 12 + len(q.question), []
    for _ in range(ancount):
        rtype, _cls, _ttl, rdlength = struct.unpack("!HHIH", reply[i + 2:i + 12])
        if rtype == TYPE_A:
            out.append(socket.inet_ntoa(reply[i + 12:i + 16]))
        i += 12 + rdlength
    return rcode, out


# ---- the server (thin shell) ------------------------------------------------------------------

class ApiSource:
    """Services and EndpointSlices of every namespace, listed with a kubeconfig's client certificate
    (the node's kube-proxy identity: system:node-proxier may list exactly these)."""

    def __init__(self, kubeconfig: Path) -> None:
        import yaml

        cfg = yaml.safe_load(kubeconfig.read_text())
        cluster, user = cfg["clusters"][0]["cluster"], cfg["users"][0]["user"]
        self.server = cluster["server"].rstrip("/")
        self.ctx = ssl.create_default_context(cafile=cluster["certificate-authority"])
        self.ctx.load_cert_chain(user["client-certificate"], user["client-key"])

    def _list(self, path: str) -> list[dict[str, Any]]:
        with urllib.request.urlopen(self.server + path, context=self.ctx, timeout=5) as r:
            items: list[dict[str, Any]] = json.loads(r.read())["items"]
            return items

    def table(self, domain: str) -> dict[str, tuple[str, ...]]:
        return records(self._list("/api/v1/services"),
                       self._list("/apis/discovery.k8s.io/v1/endpointslices"), domain)


def serve(listen: tuple[str, int], source: ApiSource, domain: str, max_age: float = 1.0,
          miss_age: float = 0.2) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(listen)
    print(f"cluster DNS for {domain} on {listen[0]}:{listen[1]}/udp", file=sys.stderr, flush=True)
    table: dict[str, tuple[str, ...]] | None = None
    read_at = float("-inf")

    def refresh() -> None:
        nonlocal table, read_at
        try:
            table, read_at = source.table(domain), time.monotonic()
        except Exception as exc:  # the API restarting: keep the last table, say why
            print(f"cluster DNS: reading the API failed: {exc!r}", file=sys.stderr, flush=True)

    while True:
        packet, peer = sock.recvfrom(4096)
        age = time.monotonic() - read_at
        if age > max_age:
            refresh()
        elif age > miss_age and table is not None:
            try:
                q = parse_query(packet)
            except BadQuery:
                q = None
            name = q.name.lower().rstrip(".") if q else ""
            if name.endswith("." + domain) and answer(table, name, TYPE_A)[0] == NXDOMAIN:
                refresh()
        reply = handle(packet, table)
        if reply is not None:
            sock.sendto(reply, peer)


def probe(server: tuple[str, int], name: str, timeout: float = 1.0) -> tuple[int, list[str]]:
    """Ask `server` for `name`'s A records (cluster start-up waits on it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(query_packet(name), server)
        return parse_addresses(s.recv(4096))


def main(argv: list[str] | None = None) -> int:
    """``python -m kubetune_devcluster.dns --listen IP:53 --kubeconfig PATH [--domain cluster.local]``"""
    p = argparse.ArgumentParser(prog="kubetune_devcluster.dns", description=main.__doc__)
    p.add_argument("--listen", required=True, type=_hostport, help="IP:PORT to answer on (UDP)")
    p.add_argument("--kubeconfig", required=True, type=Path, help="client certificate kubeconfig (file paths)")
    p.add_argument("--domain", default=CLUSTER_DOMAIN)
    args = p.parse_args(argv)
    serve(args.listen, ApiSource(args.kubeconfig), args.domain.lower().strip("."))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
