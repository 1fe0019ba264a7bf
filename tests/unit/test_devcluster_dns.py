"""The real node's cluster DNS (kubetune_devcluster.dns): names → records from Services and
EndpointSlices as CoreDNS serves them, NXDOMAIN for everything else, and the wire format (a reply
parsed back; one datagram answered through a real UDP socket on loopback)."""

from __future__ import annotations

import socket
import struct
import threading
from typing import Any

import pytest

from kubetune_devcluster.dns import (
    FORMERR,
    NOERROR,
    NOTIMP,
    NXDOMAIN,
    SERVFAIL,
    TYPE_A,
    answer,
    handle,
    parse_addresses,
    parse_query,
    query_packet,
    records,
)

TYPE_AAAA = 28


def svc(ns: str, name: str, cluster_ip: str = "None", publish: bool = False, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"namespace": ns, "name": name},
            "spec": {"clusterIP": cluster_ip, "publishNotReadyAddresses": publish, **spec}}


def eps(ns: str, service: str, *endpoints: dict[str, Any], address_type: str = "IPv4") -> dict[str, Any]:
    return {"metadata": {"namespace": ns, "name": f"{service}-abcde", "labels": {"kubernetes.io/service-name": service}},
            "addressType": address_type, "endpoints": list(endpoints)}


def ep(ip: str, hostname: str | None = None, ready: bool | None = True) -> dict[str, Any]:
    e: dict[str, Any] = {"addresses": [ip], "conditions": {} if ready is None else {"ready": ready}}
    if hostname:
        e["hostname"] = hostname
    return e


# An Indexed Job's two pods behind its headless Service (publishNotReadyAddresses, as render/service.py makes it),
# the API server's Service, and a headless Service that does not publish not-ready pods.
SERVICES = [svc("team", "tiny-ft", publish=True), svc("default", "kubernetes", "10.96.0.1"),
            svc("team", "web"), svc("team", "ext", type="ExternalName", externalName="example.com")]
SLICES = [eps("team", "tiny-ft", ep("10.88.0.7", "tiny-ft-0", ready=False), ep("10.88.0.9", "tiny-ft-1")),
          eps("team", "web", ep("10.88.0.20", ready=False), ep("10.88.0.21"), ep("10.88.0.22", ready=None)),
          eps("default", "kubernetes", ep("10.213.0.1")),  # a ClusterIP Service answers with its VIP only
          eps("team", "tiny-ft", {"addresses": ["fd00::1"], "hostname": "tiny-ft-0"}, address_type="IPv6"),
          eps("team", "gone", ep("10.88.0.30", "x"))]  # no Service: no name


def test_pods_of_a_headless_service_by_hostname_and_the_service_by_name() -> None:
    t = records(SERVICES, SLICES)
    assert t == {
        "tiny-ft.team.svc.cluster.local": ("10.88.0.7", "10.88.0.9"),
        "tiny-ft-0.tiny-ft.team.svc.cluster.local": ("10.88.0.7",),  # not ready, but the Service publishes it
        "tiny-ft-1.tiny-ft.team.svc.cluster.local": ("10.88.0.9",),
        "kubernetes.default.svc.cluster.local": ("10.96.0.1",),
        "web.team.svc.cluster.local": ("10.88.0.21", "10.88.0.22"),  # the not-ready one left out
    }
    # what pod 1 asks first for KUBETUNE_MASTER_ADDR=tiny-ft-0.tiny-ft (search path <ns>.svc.cluster.local)
    assert answer(t, "tiny-ft-0.tiny-ft.team.svc.cluster.local.", TYPE_A) == (NOERROR, ("10.88.0.7",))
    assert answer(t, "TINY-FT-0.Tiny-Ft.team.svc.cluster.local", TYPE_A) == (NOERROR, ("10.88.0.7",))


def test_other_names_are_nxdomain_and_never_forwarded() -> None:
    t = records(SERVICES, SLICES)
    for name in ("tiny-ft-0.tiny-ft.team.svc.svc.cluster.local", "tiny-ft-0.tiny-ft.cluster.local", "tiny-ft-0.tiny-ft",
                 "huggingface.co", "ext.team.svc.cluster.local", "x.gone.team.svc.cluster.local", "cluster.localx", ""):
        assert answer(t, name, TYPE_A) == (NXDOMAIN, ()), name


def test_known_names_have_no_other_records_and_their_parents_exist() -> None:
    t = records(SERVICES, SLICES)
    # getaddrinfo asks A and AAAA: a known name's AAAA is an empty NOERROR, not NXDOMAIN
    assert answer(t, "tiny-ft-0.tiny-ft.team.svc.cluster.local", TYPE_AAAA) == (NOERROR, ())
    assert answer(t, "team.svc.cluster.local", TYPE_A) == (NOERROR, ())
    assert answer(t, "svc.cluster.local", TYPE_A) == (NOERROR, ())


def test_a_service_with_no_ready_endpoints_has_a_name_without_records() -> None:
    t = records([svc("team", "web")], [eps("team", "web", ep("10.88.0.20", "w-0", ready=False))])
    assert t == {"web.team.svc.cluster.local": ()}
    assert answer(t, "web.team.svc.cluster.local", TYPE_A) == (NOERROR, ())


def test_a_query_answered_on_the_wire() -> None:
    t = records(SERVICES, SLICES)
    packet = query_packet("tiny-ft.team.svc.cluster.local", qid=0x1234)
    q = parse_query(packet)
    assert (q.id, q.name, q.qtype) == (0x1234, "tiny-ft.team.svc.cluster.local", TYPE_A)
    reply = handle(packet, t)
    assert reply is not None
    flags = struct.unpack("!H", reply[2:4])[0]
    assert reply[:2] == b"\x12\x34" and flags & 0x8000 and flags & 0x0400 and flags & 0x0100  # QR, AA, RD echoed
    assert not flags & 0x0080  # no recursion available: nothing is forwarded
    assert parse_addresses(reply) == (NOERROR, ["10.88.0.7", "10.88.0.9"])
    assert parse_addresses(handle(query_packet("pypi.org"), t) or b"") == (NXDOMAIN, [])
    assert parse_addresses(handle(query_packet("kubernetes.default.svc.cluster.local"), None) or b"") == (SERVFAIL, [])


@pytest.mark.parametrize(("packet", "rcode"), [
    (b"\x00\x07" + b"\x00" * 4, None),  # not even a header: dropped
    (struct.pack("!HHHHHH", 7, 0x0100, 2, 0, 0, 0), FORMERR),  # two questions
    (struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\x05abc", FORMERR),  # the name runs past the packet
    (struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01", FORMERR),  # a pointer
    (struct.pack("!HHHHHH", 7, 0x2100, 1, 0, 0, 0) + b"\x01a\x00\x00\x01\x00\x01", NOTIMP),  # opcode 4 (NOTIFY)
])
def test_malformed_or_unsupported_queries(packet: bytes, rcode: int | None) -> None:
    reply = handle(packet, {})
    if rcode is None:
        assert reply is None
    else:
        assert reply is not None and reply[:2] == b"\x00\x07" and reply[3] & 0xF == rcode


def test_answers_over_a_udp_socket() -> None:
    """`handle` behind a real datagram socket (loopback), asked by `probe` as cluster start-up asks."""
    from kubetune_devcluster.dns import probe

    t = records(SERVICES, SLICES)
    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))

    def one() -> None:
        packet, peer = server.recvfrom(4096)
        server.sendto(handle(packet, t) or b"", peer)

    th = threading.Thread(target=one, daemon=True)
    th.start()
    try:
        assert probe(server.getsockname(), "kubernetes.default.svc.cluster.local") == (NOERROR, ["10.96.0.1"])
    finally:
        th.join(5)
        server.close()
