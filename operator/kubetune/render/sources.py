"""Where the trainer finds its inputs: URIs ⇒ (volumes, mounts, resolved locations, secret env).

- `pvc://claim/path` ⇒ the claim is mounted once at /mnt/pvc/<claim> (read-only unless the output
  is on it) and the source resolves to /mnt/pvc/<claim>/<path>;
- `hf://` and `s3://` pass through: the trainer fetches them (s3:// with the AWS_* variables of the
  Secret `spec.storage.secretRef`, given to the container with envFrom by kubetune.render.job);
- an s3:// output is staged in the pod's /tmp (S3_STAGING; checkpoints stay there, so a retried
  pod trains afresh) and uploaded by the trainer at the end;
- `file://` is for `kubetune run` only (the webhook warns); it passes through unchanged.
- the checked data (`sources.checkedData`) lies below the output: the preflight pod writes it there
  (the output claim is mounted writable in both pods), the trainer pod reads it.
Secrets reach the trainer only as `env[].valueFrom.secretKeyRef`: their values never appear in the
ConfigMap, the status or the operator's memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kubetune.api.resources import AnyJob, PreferenceAlignment
from kubetune.api.trainer_contract import CHECKED_DATA_DIR, SecretEnv, Sources, child_uri

PVC_ROOT = "/mnt/pvc"
S3_STAGING = "/tmp/kubetune/output"
HF_TOKEN_ENV = "HF_TOKEN"
JUDGE_API_KEY_ENV = "KUBETUNE_JUDGE_API_KEY"
SCHEMES = ("hf://", "pvc://", "s3://", "file://")


def split_pvc(uri: str) -> tuple[str, str]:
    """pvc://claim/some/path ⇒ ("claim", "some/path")."""
    claim, _, path = uri[len("pvc://"):].partition("/")
    return claim, path.strip("/")


def mount_path(claim: str) -> str:
    return f"{PVC_ROOT}/{claim}"


def volume_name(claim: str, index: int) -> str:
    return f"pvc-{index}"


def to_local(uri: str) -> str:
    """A URI as the trainer pod sees it."""
    match uri.split("://", 1)[0] + "://":
        case "pvc://":
            claim, path = split_pvc(uri)
            return f"{mount_path(claim)}/{path}".rstrip("/")
        case "hf://" | "s3://" | "file://":
            return uri
        case _:
            raise ValueError(f"unsupported URI {uri!r}: use one of {', '.join(SCHEMES)}")


@dataclass
class ResolvedSources:
    sources: Sources
    volumes: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)
    env: list[dict[str, Any]] = field(default_factory=list)
    secret_env: SecretEnv = field(default_factory=SecretEnv)
    output_claim: str | None = None


def _secret_env(name: str, ref: Any) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def resolve_sources(job: AnyJob, *, model_uri: str | None = None, adapter_uri: str | None = None,
                    model_revision: str | None = None, token_secret_ref: Any = None) -> ResolvedSources:
    """Resolve every URI of the job. For a PreferenceAlignment chained on a FineTuneJob, the caller
    passes the referenced job's base model (`model_uri`, `model_revision`, `token_secret_ref`) and
    its artifact (`adapter_uri`)."""
    spec = job.spec
    base = spec.base_model
    model = model_uri or (base.uri if base is not None else None)
    if model is None:
        raise ValueError("no base model: spec.baseModel or the referenced FineTuneJob's must be known")
    if isinstance(job, PreferenceAlignment) and job.spec.adapter is not None and adapter_uri is None:
        adapter_uri = job.spec.adapter.uri
    ev = spec.evaluation
    replay = getattr(spec.dataset, "replay", None)  # FineTuneJob only
    uris: dict[str, str | None] = {
        "model": model,
        "adapter": adapter_uri,
        "dataset": spec.dataset.uri,
        "replay": replay.uri if replay is not None else None,
        "output": spec.output.uri,
        "promoted": spec.output.promoted_uri,
        "golden": ev.golden_dataset.uri if ev and ev.golden_dataset else None,
        "safety": ev.safety_dataset.uri if ev and ev.safety_dataset else None,
        "forgetting": ev.forgetting_dataset.uri if ev and ev.forgetting_dataset else None,
    }
    writable = {split_pvc(u)[0] for k, u in uris.items() if k in ("output", "promoted") and u and u.startswith("pvc://")}
    claims: list[str] = []
    for u in uris.values():
        if u and u.startswith("pvc://"):
            claim = split_pvc(u)[0]
            if claim not in claims:
                claims.append(claim)
    out = ResolvedSources(sources=Sources(
        model=to_local(model),
        model_revision=model_revision or (base.revision if base is not None else None),
        adapter=to_local(adapter_uri) if adapter_uri else None,
        dataset=to_local(spec.dataset.uri),
        output=S3_STAGING if spec.output.uri.startswith("s3://") else to_local(spec.output.uri),
        promoted=to_local(spec.output.promoted_uri) if spec.output.promoted_uri else None,
        golden=to_local(uris["golden"]) if uris["golden"] else None,
        safety=to_local(uris["safety"]) if uris["safety"] else None,
        forgetting=to_local(uris["forgetting"]) if uris["forgetting"] else None,
        replay=to_local(uris["replay"]) if uris["replay"] else None,
        checked_data=to_local(child_uri(spec.output.uri, CHECKED_DATA_DIR)),
    ))
    for i, claim in enumerate(claims):
        read_only = claim not in writable
        out.volumes.append({"name": volume_name(claim, i),
                            "persistentVolumeClaim": {"claimName": claim, "readOnly": read_only}})
        out.mounts.append({"name": volume_name(claim, i), "mountPath": mount_path(claim), "readOnly": read_only})
    if spec.output.uri.startswith("pvc://"):
        out.output_claim = split_pvc(spec.output.uri)[0]
    token = token_secret_ref or (base.token_secret_ref if base is not None else None)
    if token is not None:
        out.env.append(_secret_env(HF_TOKEN_ENV, token))
        out.secret_env.hf_token = HF_TOKEN_ENV
    if ev is not None and ev.judge is not None and ev.judge.api_key_secret_ref is not None:
        out.env.append(_secret_env(JUDGE_API_KEY_ENV, ev.judge.api_key_secret_ref))
        out.secret_env.judge_api_key = JUDGE_API_KEY_ENV
    return out
