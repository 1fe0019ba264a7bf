"""The webhook certificate the operator keeps itself (kubetune.controller.webhook): issued for the
Service's names, renewed before expiry under the same CA (the caBundle does not move), a new CA
trusted next to the old one, and a TLS handshake against the bundle succeeds."""

from __future__ import annotations

import socket
import ssl
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509

from kubetune.controller.webhook import (
    CA_DAYS,
    SERVING_DAYS,
    WebhookTls,
    issue_webhook_tls,
    renewal_reason,
    self_signed_certificate,
    write_tls_files,
)

NAMES = ["kt-kubetune-webhook", "kt-kubetune-webhook.ns.svc", "127.0.0.1"]
NOW = datetime(2026, 12, 1, tzinfo=UTC)


def test_issued_for_the_names_and_stable_until_renewal_is_due() -> None:
    tls = issue_webhook_tls(NAMES, NOW)
    cert = x509.load_pem_x509_certificate(tls.tls_crt)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(n) for n in sans.get_values_for_type(x509.DNSName)] == NAMES[:2]
    assert [str(n) for n in sans.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert renewal_reason(tls, NAMES, NOW) is None
    assert renewal_reason(tls, NAMES, NOW + timedelta(days=SERVING_DAYS - 31)) is None
    assert "expires" in (renewal_reason(tls, NAMES, NOW + timedelta(days=SERVING_DAYS - 29)) or "")
    assert "names" in (renewal_reason(tls, [*NAMES, "other"], NOW) or "")
    assert renewal_reason(None, NAMES, NOW) == "no certificate yet"


def test_renewal_keeps_the_ca_so_the_ca_bundle_does_not_move() -> None:
    first = issue_webhook_tls(NAMES, NOW)
    later = NOW + timedelta(days=SERVING_DAYS - 10)
    second = issue_webhook_tls(NAMES, later, previous=first)
    assert second.ca_bundle == first.ca_bundle and second.tls_crt != first.tls_crt
    assert renewal_reason(second, NAMES, later) is None


def test_a_new_ca_is_trusted_next_to_the_old_one() -> None:
    first = issue_webhook_tls(NAMES, NOW)
    near_ca_end = NOW + timedelta(days=CA_DAYS - 10)
    second = issue_webhook_tls(NAMES, near_ca_end, previous=first)
    assert second.ca_crt != first.ca_crt
    assert second.ca_bundle == second.ca_crt + first.ca_crt


def test_a_certificate_of_another_ca_is_renewed() -> None:
    a, b = issue_webhook_tls(NAMES, NOW), issue_webhook_tls(NAMES, NOW)
    mixed = WebhookTls(ca_crt=a.ca_crt, ca_key=a.ca_key, tls_crt=b.tls_crt, tls_key=b.tls_key, ca_bundle=a.ca_bundle)
    assert renewal_reason(mixed, NAMES, NOW) == "it is not signed by the CA in the Secret"
    assert WebhookTls.from_secret_data(a.to_secret_data()) == a
    assert WebhookTls.from_secret_data({}) is None and WebhookTls.from_secret_data(None) is None


def test_a_client_trusting_the_bundle_completes_a_handshake(tmp_path: Path) -> None:
    tls = issue_webhook_tls(["localhost", "127.0.0.1"], datetime.now(UTC))
    certfile, keyfile, cafile = write_tls_files(tls, str(tmp_path))
    assert (tmp_path / "tls.key").stat().st_mode & 0o777 == 0o600
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(certfile, keyfile)
    client_ctx = ssl.create_default_context(cafile=cafile)
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        port = srv.getsockname()[1]

        def serve() -> None:
            conn, _ = srv.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as s:
                s.sendall(b"ok")

        t = threading.Thread(target=serve)
        t.start()
        with socket.create_connection(("127.0.0.1", port)) as raw, \
                client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as c:
            assert c.recv(2) == b"ok"
        t.join()


def test_unchanged_files_are_not_rewritten(tmp_path: Path) -> None:
    tls = issue_webhook_tls(NAMES, NOW)
    write_tls_files(tls, str(tmp_path))
    mtime = (tmp_path / "tls.crt").stat().st_mtime_ns
    write_tls_files(tls, str(tmp_path))
    assert (tmp_path / "tls.crt").stat().st_mtime_ns == mtime


def test_dev_certificate_names_the_host_and_localhost(tmp_path: Path) -> None:
    certfile, _, cafile = self_signed_certificate("10.1.2.3", str(tmp_path))
    cert = x509.load_pem_x509_certificate(Path(certfile).read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(v) for v in sans.get_values_for_type(x509.IPAddress)} == {"10.1.2.3", "127.0.0.1"}
    assert Path(cafile).read_bytes() != Path(certfile).read_bytes()
