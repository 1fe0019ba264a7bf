"""The webhook's certificate, kept by the operator itself (the chart's default): nothing is generated
when the chart is rendered, so `helm template` — what Argo CD runs — renders the same bytes every
time and a sync never replaces a certificate the running operator serves.

Every `check_seconds` (and once before the webhook server starts) each replica:
1. reads the Secret (the chart renders it without data; the operator fills it in) and, when
   `webhook.renewal_reason` says so (none yet, expiring within 30 days, other names), issues a new
   one (`webhook.issue_webhook_tls`: same CA while it is valid, so the caBundle does not move) and
   writes it with the Secret's resourceVersion as precondition — of two replicas renewing at once
   one wins, the other reads and serves the winner's;
2. writes the files kopf serves (kopf re-reads them and restarts its server on a change: a renewal
   needs no restart);
3. sets `caBundle` on every entry of the chart's ValidatingWebhookConfiguration that lacks it or has
   another one (a first install, a `kubectl replace` or a sync that dropped it).
"""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.exceptions import ApiException

from kubetune.api.constants import LABEL_MANAGED_BY
from kubetune.controller.k8s import KubeApi
from kubetune.controller.webhook import WebhookTls, issue_webhook_tls, renewal_reason, write_tls_files

log = logging.getLogger("kubetune.controller")

VWC_PATH = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"


class WebhookCertificates:
    def __init__(self, api: KubeApi, namespace: str, secret: str, configuration: str | None, names: Sequence[str],
                 directory: str, check_seconds: float = 30.0) -> None:
        self.api, self.namespace, self.secret, self.configuration = api, namespace, secret, configuration
        self.names, self.directory, self.check_seconds = list(names), directory, check_seconds
        self._stop = threading.Event()
        self.tls: WebhookTls | None = None

    def start(self) -> tuple[str, str, str]:
        """Sync once (raises when the certificate cannot be had: the operator cannot serve), then keep
        syncing in a thread; returns (certfile, keyfile, cafile)."""
        paths = self.sync()
        self._stop.clear()
        threading.Thread(target=self._loop, name="kubetune-webhook-tls", daemon=True).start()
        return paths

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        while not self._stop.wait(self.check_seconds):
            try:
                self.sync()
            except Exception as exc:  # the API server away: the files in place keep being served
                log.warning("webhook certificate: %s", exc)

    def sync(self) -> tuple[str, str, str]:
        tls = self._certificate()
        paths = write_tls_files(tls, self.directory)
        self.tls = tls
        if self.configuration:
            self._inject_ca(tls.ca_bundle)
        return paths

    def _certificate(self) -> WebhookTls:
        for _ in range(3):  # a lost race: read the winner's
            secret = self.api.get("Secret", self.namespace, self.secret)
            current = WebhookTls.from_secret_data((secret or {}).get("data"))
            now = datetime.now(UTC)
            reason = renewal_reason(current, self.names, now)
            if reason is None and current is not None:
                return current
            tls = issue_webhook_tls(self.names, now, previous=current)
            try:
                if secret is None:
                    self.api.create({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                                     "metadata": {"name": self.secret, "namespace": self.namespace,
                                                  "labels": {LABEL_MANAGED_BY: "kubetune"}},
                                     "data": tls.to_secret_data()})
                    continue  # read back: another replica may have created it first
                self.api.replace({**secret, "data": tls.to_secret_data()})
            except ApiException as exc:
                if exc.status == 409:
                    continue
                raise
            log.info("webhook certificate: issued for %s (%s)", ", ".join(self.names), reason)
            return tls
        raise RuntimeError(f"webhook certificate: Secret {self.namespace}/{self.secret} keeps changing under us")

    def _inject_ca(self, bundle: bytes) -> None:
        path = f"{VWC_PATH}/{self.configuration}"
        try:
            vwc: dict[str, Any] = self.api.request("GET", path, resource="validatingwebhookconfigurations")
        except ApiException as exc:
            if exc.status == 404:  # not applied yet (a sync wave later): the next round sets it
                log.info("webhook certificate: ValidatingWebhookConfiguration %s not found yet", self.configuration)
                return
            raise
        want = base64.b64encode(bundle).decode()
        hooks = vwc.get("webhooks") or []
        if all((h.get("clientConfig") or {}).get("caBundle") == want for h in hooks):
            return
        for h in hooks:
            h.setdefault("clientConfig", {})["caBundle"] = want
        try:
            self.api.request("PUT", path, vwc, resource="validatingwebhookconfigurations")
            log.info("webhook certificate: caBundle set on %s", self.configuration)
        except ApiException as exc:
            if exc.status != 409:  # 409: changed meanwhile, the next round sets it
                raise
