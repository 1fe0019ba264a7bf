"""Validating admission: the same checks as `kubetune validate` (schema, CEL, semantic rules) plus
the memory plan; a refusal carries the estimate and the best suggestion that fits.

TLS, three ways:
- the chart's default: the operator issues its own CA and serving certificate (`issue_webhook_tls`),
  keeps them in a Secret shared by its replicas, renews them RENEW_BEFORE expiry and writes the CA
  into the chart's ValidatingWebhookConfiguration (kubetune.controller.webhook_tls) — nothing
  generated at render time, so `helm template` (Argo CD) renders the same bytes every time;
- KUBETUNE_WEBHOOK_CERT/KEY (cert-manager): kopf serves those files and reloads them when they change;
- neither (dev/test): a CA and certificate for KUBETUNE_WEBHOOK_HOST in a temporary folder, and with
  KUBETUNE_WEBHOOK_MANAGED kopf writes that CA into the configuration it manages.
"""

from __future__ import annotations

import base64
import ipaddress
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from kubetune.api.spec import FineTuneJobSpec
from kubetune.api.validate import validate_object
from kubetune.planning.admission import fit_problems


def review(obj: Mapping[str, Any], old: Mapping[str, Any] | None,
           lookup: Callable[[str], FineTuneJobSpec | None] | None) -> tuple[list[str], list[str]]:
    """(errors, warnings) for an admission request, as one line each."""
    body = {k: v for k, v in obj.items() if k != "status"}
    old_body = {k: v for k, v in old.items() if k != "status"} if old else None
    problems = validate_object(body, local=False, lookup=lookup, fit_check=fit_problems, old=old_body)
    errors = [str(p) for p in problems if p.severity == "error"]
    warnings = [str(p) for p in problems if p.severity != "error"]
    return errors, warnings


def refusal(errors: list[str], limit: int = 4000) -> str:
    text = "; ".join(errors)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class WebhookTls:
    """PEM bytes of the webhook's CA and serving certificate, as the operator keeps them in its Secret
    (keys ca.crt, ca.key, tls.crt, tls.key). `ca_bundle` is what the ValidatingWebhookConfiguration
    trusts: the CA, and while a CA is being replaced, the previous one too."""

    ca_crt: bytes
    ca_key: bytes
    tls_crt: bytes
    tls_key: bytes
    ca_bundle: bytes

    def to_secret_data(self) -> dict[str, str]:
        return {k: base64.b64encode(v).decode() for k, v in (
            ("ca.crt", self.ca_bundle), ("ca-key.pem", self.ca_key), ("tls.crt", self.tls_crt),
            ("tls.key", self.tls_key), ("ca-issuer.crt", self.ca_crt))}

    @classmethod
    def from_secret_data(cls, data: Mapping[str, str] | None) -> WebhookTls | None:
        try:
            d = {k: base64.b64decode(v) for k, v in (data or {}).items()}
            return cls(ca_crt=d["ca-issuer.crt"], ca_key=d["ca-key.pem"], tls_crt=d["tls.crt"], tls_key=d["tls.key"],
                       ca_bundle=d["ca.crt"])
        except (KeyError, ValueError):
            return None


CA_DAYS = 3650
SERVING_DAYS = 365
RENEW_BEFORE = timedelta(days=30)


def _san(name: str) -> Any:
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def issue_webhook_tls(names: Sequence[str], now: datetime, previous: WebhookTls | None = None) -> WebhookTls:
    """A serving certificate for `names` (DNS names or IP addresses), signed by `previous`'s CA while
    that CA is valid for longer than RENEW_BEFORE (the caBundle then does not change), else by a new
    CA — the bundle then trusts both, so replicas still serving the old certificate stay valid."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not names:
        raise ValueError("the webhook certificate needs at least one DNS name or IP address")
    ca_cert, ca_key, old_bundle = None, None, b""
    if previous is not None:
        try:
            ca_cert = x509.load_pem_x509_certificate(previous.ca_crt)
            ca_key = serialization.load_pem_private_key(previous.ca_key, None)
            old_bundle = previous.ca_crt
        except ValueError:
            ca_cert = None
        if ca_cert is not None and ca_cert.not_valid_after_utc - now <= RENEW_BEFORE:
            ca_cert = None
    ca_pem_bundle = b""
    if ca_cert is None or not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubetune-webhook-ca")])
        ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
                   .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=CA_DAYS))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
                   .sign(ca_key, hashes.SHA256()))
        ca_pem_bundle = old_bundle if previous is not None and _valid_pem(old_bundle, now) else b""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=SERVING_DAYS))
            .add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_crt = ca_cert.public_bytes(serialization.Encoding.PEM)
    return WebhookTls(
        ca_crt=ca_crt,
        ca_key=ca_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()),
        tls_crt=cert.public_bytes(serialization.Encoding.PEM),
        tls_key=key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()),
        ca_bundle=ca_crt + (ca_pem_bundle if ca_pem_bundle != ca_crt else b""))


def _valid_pem(pem: bytes, now: datetime) -> bool:
    from cryptography import x509

    try:
        return bool(pem) and x509.load_pem_x509_certificate(pem).not_valid_after_utc > now
    except ValueError:
        return False


def renewal_reason(tls: WebhookTls | None, names: Sequence[str], now: datetime) -> str | None:
    """Why the certificate in the Secret must be (re)issued, or None when it serves `names` for
    longer than RENEW_BEFORE and chains to its CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

    if tls is None:
        return "no certificate yet"
    try:
        cert = x509.load_pem_x509_certificate(tls.tls_crt)
        ca = x509.load_pem_x509_certificate(tls.ca_crt)
    except ValueError:
        return "the certificate does not parse"
    if cert.not_valid_after_utc - now <= RENEW_BEFORE or ca.not_valid_after_utc - now <= RENEW_BEFORE:
        return f"it expires on {min(cert.not_valid_after_utc, ca.not_valid_after_utc):%Y-%m-%d}"
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    have = {str(v) for v in sans.get_values_for_type(x509.DNSName)} | {
        str(v) for v in sans.get_values_for_type(x509.IPAddress)}
    if have != set(names):
        return f"it names {sorted(have)}, not {sorted(set(names))}"
    pub = ca.public_key()
    try:
        assert isinstance(pub, ec.EllipticCurvePublicKey)
        assert cert.signature_hash_algorithm is not None
        pub.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
    except Exception:
        return "it is not signed by the CA in the Secret"
    return None


def self_signed_certificate(host: str, directory: str) -> tuple[str, str, str]:
    """A CA and a serving certificate for `host` and localhost, written to `directory` (dev/test,
    and kopf's managed webhook). Returns (certfile, keyfile, cafile)."""
    names = [host] + [n for n in ("localhost", "127.0.0.1") if n != host]
    tls = issue_webhook_tls(names, datetime.now(UTC))
    return write_tls_files(tls, directory)


def write_tls_files(tls: WebhookTls, directory: str) -> tuple[str, str, str]:
    """tls.crt, tls.key (mode 0600) and ca.crt in `directory`, each replaced atomically and only when
    its content changed (kopf re-reads the files and restarts its server when they change)."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for name, content, mode in (("tls.crt", tls.tls_crt, 0o644), ("tls.key", tls.tls_key, 0o600),
                                ("ca.crt", tls.ca_bundle, 0o644)):
        path = os.path.join(directory, name)
        paths.append(path)
        try:
            with open(path, "rb") as f:
                if f.read() == content:
                    continue
        except OSError:
            pass
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        os.replace(tmp, path)
    # the key first would be read with the old certificate: write the pair, then the bundle (done above
    # in that order; kopf hashes all three and reloads once they differ)
    return paths[0], paths[1], paths[2]
