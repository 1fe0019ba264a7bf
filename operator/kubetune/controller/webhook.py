"""Validating admission: the same checks as `kubetune validate` (schema, CEL, semantic rules) plus
the memory plan; a refusal carries the estimate and the best suggestion that fits.

TLS: with KUBETUNE_WEBHOOK_CERT/KEY (cert-manager in the chart) kopf serves that certificate;
without, kopf generates a self-signed one (dev/test) and, when KUBETUNE_WEBHOOK_MANAGED is on,
writes its CA into the ValidatingWebhookConfiguration it manages.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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


def self_signed_certificate(host: str, directory: str) -> tuple[str, str]:
    """A self-signed serving certificate for `host` (dev/test; the chart uses cert-manager).
    Returns (certfile, keyfile); the certificate is its own CA (the webhook's caBundle)."""
    import datetime
    import ipaddress
    import os

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    sans: list[x509.GeneralName] = [x509.DNSName("localhost")]
    try:
        sans.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        sans.append(x509.DNSName(host))
    if host != "127.0.0.1":
        sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    os.makedirs(directory, exist_ok=True)
    certfile, keyfile = os.path.join(directory, "tls.crt"), os.path.join(directory, "tls.key")
    with open(certfile, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(keyfile, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    os.chmod(keyfile, 0o600)
    return certfile, keyfile
