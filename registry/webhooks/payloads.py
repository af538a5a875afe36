"""What a receiver gets: the Hugging Face Hub's webhook payload where the concepts match, so a receiver
written with `huggingface_hub.WebhookPayload` parses it, plus swiftreg's own fields under `swiftreg`.

    {"event": {"action": "update", "scope": "repo.content"},
     "repo": {"type": "model", "name": "team/x", "id": "team/x", "private": true, "owner": {"id": "team"},
              "url": {"web": "/team/x", "api": "/api/v1/repos/team/x"}, "headSha": "sha256:...", "tags": [...]},
     "updatedRefs": [{"ref": "refs/tags/prod", "oldSha": "sha256:...", "newSha": "sha256:..."}],
     "webhook": {"id": "7", "version": 3},
     "swiftreg": {"event": "tag.moved", "id": 41, "stream": "team/x", "sequence": 12, "namespace": "team",
                  "created_at": "...", "revision": {...}, "ref": {...}, "validation": {...}, "job": {...}}}

`headSha` is the digest of the revision the event is about (written `head_sha` too: the name
huggingface_hub's model reads). Refs are git-style, `refs/heads/<branch>` and `refs/tags/<tag>`.
"""
from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Protocol

#: (action, scope) of each kind in the Hub's vocabulary (actions: create, delete, move, update).
HUB_EVENT: dict[str, tuple[str, str]] = {
    "repo.created": ("create", "repo"),
    "revision.created": ("update", "repo.content"),
    "tag.created": ("create", "repo.content"),
    "tag.moved": ("update", "repo.content"),
    "tag.deleted": ("delete", "repo.content"),
    "import.completed": ("update", "repo.content"),
    "validation.failed": ("update", "repo.validation"),
    "validation.regressed": ("update", "repo.validation"),
    "job.succeeded": ("update", "job"),
    "job.failed": ("update", "job"),
    "webhook.test": ("update", "webhook"),
}
WEBHOOK_VERSION = 3  # the Hub payload version this follows


class EventLike(Protocol):
    id: int
    kind: str
    namespace: str
    stream: str
    seq: int
    data: dict[str, Any]
    created_at: datetime


def git_ref(name: str, kind: str) -> str:
    """`refs/heads/main`, `refs/tags/v1`: how the Hub names refs in `updatedRefs`."""
    return f"refs/{'tags' if kind == 'tag' else 'heads'}/{name}"


def build(event: EventLike, webhook_id: int) -> dict[str, Any]:
    """The payload of `event` as sent to webhook `webhook_id`."""
    data = dict(event.data)
    data.pop("repo_id", None)
    action, scope = HUB_EVENT.get(event.kind, ("update", "repo"))
    repo_name = data.pop("repo", None) or event.namespace
    head = data.pop("head", None)
    repo: dict[str, Any] = {
        "type": "model", "name": repo_name, "id": repo_name,
        "private": True, "owner": {"id": event.namespace},
        "url": {"web": f"/{repo_name}", "api": f"/api/v1/repos/{repo_name}"},
        "tags": data.pop("tags", None) or [],
    }
    if head:
        repo["headSha"] = repo["head_sha"] = head
    payload: dict[str, Any] = {"event": {"action": action, "scope": scope}, "repo": repo,
                               "webhook": {"id": str(webhook_id), "version": WEBHOOK_VERSION}}
    refs = data.pop("updated_refs", None)
    if refs:
        payload["updatedRefs"] = [{"ref": r["ref"], "oldSha": r.get("old"), "newSha": r.get("new")} for r in refs]
    created = event.created_at
    payload["swiftreg"] = {"event": event.kind, "id": event.id, "stream": event.stream, "sequence": event.seq,
                           "namespace": event.namespace,
                           "created_at": created.isoformat() if isinstance(created, datetime) else str(created),
                           **data}
    return payload


def encode(payload: dict[str, Any]) -> bytes:
    """The exact bytes sent (and signed): compact JSON, UTF-8."""
    return json.dumps(payload, separators=(",", ":"), sort_keys=True, default=str).encode()


# ----- the data of each kind, written by the service when it records an event ------------------------------

def revision_data(info: Any, *, repo_id: str) -> dict[str, Any]:
    """swiftreg's fields of a revision (a registry.api.RevisionInfo)."""
    meta = info.meta or {}
    return {"repo": info.repo, "repo_id": repo_id, "head": info.digest, "tags": list(info.tags),
            "revision": {"number": info.number, "digest": info.digest, "format": info.format, "kind": info.kind,
                         "tuner_type": meta.get("tuner_type"), "r": meta.get("r"),
                         "lora_alpha": meta.get("lora_alpha"), "target_modules": meta.get("target_modules"),
                         "dtype": meta.get("dtype"), "parameters": meta.get("parameters"),
                         "base_model": info.base_model, "message": info.message, "author": info.author,
                         "tags": list(info.tags), "branches": list(info.branches),
                         "created_at": info.created_at.isoformat()}}
