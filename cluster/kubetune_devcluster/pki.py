"""Certificates and keys of the local control plane (uses `cryptography`)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# A client certificate per component, (common name, organisations).
CLIENTS: dict[str, tuple[str, list[str]]] = {
    "admin": ("kubernetes-admin", ["system:masters"]),
    "kube-controller-manager": ("system:kube-controller-manager", []),
    "kube-scheduler": ("system:kube-scheduler", []),
    # kwok patches node/pod status of many nodes and manages leases: give it full rights.
    "kwok": ("kwok-controller", ["system:masters"]),
    # The real node: the kubelet (Node authorizer + NodeRestriction), kube-proxy (bound to
    # system:node-proxier by the default policy), and the API server's client for kubelets.
    "kubelet": ("system:node:kubetune-node-0", ["system:nodes"]),
    "kube-proxy": ("system:kube-proxy", []),
    "apiserver-kubelet-client": ("kube-apiserver-kubelet-client", ["system:masters"]),
}
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"


@dataclass(frozen=True)
class Pki:
    dir: Path

    def path(self, name: str) -> Path:
        return self.dir / name

    @property
    def ca_crt(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.dir / "ca.key"

    @property
    def front_proxy_ca_crt(self) -> Path:
        return self.dir / "front-proxy-ca.crt"

    @property
    def sa_key(self) -> Path:
        return self.dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.dir / "sa.pub"

    def cert(self, name: str) -> Path:
        return self.dir / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"


def _ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8
        if isinstance(key, ec.EllipticCurvePrivateKey)
        else serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _name(cn: str, orgs: list[str] | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in (orgs or [])]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    return x509.Name(attrs)


def _validity(builder: x509.CertificateBuilder, days: int) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return builder.not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(
        now + dt.timedelta(days=days)
    )


def _make_ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _ec_key()
    b = x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
    b = _validity(b, 3650).serial_number(x509.random_serial_number()).public_key(key.public_key())
    b = b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    b = b.add_extension(
        x509.KeyUsage(
            digital_signature=True,
            key_cert_sign=True,
            crl_sign=True,
            content_commitment=False,
            key_encipherment=True,
            data_encipherment=False,
            key_agreement=False,
            encipher_only=False,
            decipher_only=False,
        ),
        critical=True,
    )
    b = b.add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    return b.sign(key, hashes.SHA256()), key


def _issue(
    ca: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    cn: str,
    orgs: list[str] | None = None,
    *,
    server: bool = False,
    dns: list[str] | None = None,
    ips: list[str] | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _ec_key()
    b = x509.CertificateBuilder().subject_name(_name(cn, orgs)).issuer_name(ca.subject)
    b = _validity(b, 365).serial_number(x509.random_serial_number()).public_key(key.public_key())
    b = b.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    b = b.add_extension(
        x509.KeyUsage(
            digital_signature=True,
            key_encipherment=True,
            content_commitment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=False,
            crl_sign=False,
            encipher_only=False,
            decipher_only=False,
        ),
        critical=True,
    )
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] if server else [ExtendedKeyUsageOID.CLIENT_AUTH]
    b = b.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    b = b.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
    )
    if dns or ips:
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns or []]
        names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips or []]
        b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return b.sign(ca_key, hashes.SHA256()), key


def generate(directory: Path, node_ip: str | None = None, node_name: str | None = None) -> Pki:
    """Write a fresh CA, serving/client certificates and the service-account key pair. With a
    real node (`node_ip`), the API server's certificate also names that address and the kubelet
    gets a serving certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    pki = Pki(directory)

    ca, ca_key = _make_ca("kubetune-dev-ca")
    _write_cert(pki.ca_crt, ca)
    _write_key(pki.ca_key, ca_key)

    serving, serving_key = _issue(
        ca,
        ca_key,
        "kube-apiserver",
        server=True,
        dns=[
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ],
        ips=["127.0.0.1", "::1", KUBERNETES_SERVICE_IP, *([node_ip] if node_ip else [])],
    )
    _write_cert(pki.cert("apiserver"), serving)
    _write_key(pki.key("apiserver"), serving_key)
    if node_ip:
        c, k = _issue(ca, ca_key, node_name or node_ip, server=True, dns=[node_name] if node_name else [],
                      ips=[node_ip])
        _write_cert(pki.cert("kubelet-serving"), c)
        _write_key(pki.key("kubelet-serving"), k)

    for name, (cn, orgs) in CLIENTS.items():
        c, k = _issue(ca, ca_key, cn, orgs)
        _write_cert(pki.cert(name), c)
        _write_key(pki.key(name), k)

    # Aggregation layer (front proxy) so extension API servers could be added.
    fp_ca, fp_key = _make_ca("kubetune-dev-front-proxy-ca")
    _write_cert(pki.front_proxy_ca_crt, fp_ca)
    _write_key(pki.dir / "front-proxy-ca.key", fp_key)
    c, k = _issue(fp_ca, fp_key, "front-proxy-client")
    _write_cert(pki.cert("front-proxy-client"), c)
    _write_key(pki.key("front-proxy-client"), k)

    sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_key(pki.sa_key, sa)
    pki.sa_pub.write_bytes(
        sa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return pki
