"""The embedded registry: `Registry`, every registry operation on this machine's database and blob store.

The CLI calls it directly; the server calls it behind HTTP; `RemoteRegistry` offers the same
`registry.api.RegistryAPI` over HTTP. One room per job:

    core.py      the registry's state (home, database handle, store, snapshots) and shared row lookups
    blobs.py     files into the blob store and back out of it, verified
    push.py      push, push_base, push_manifest: blobs first, then one transaction numbers the revision
    commits.py   commit, create_repo: a hub client's commit applied to a branch head and pushed as one revision
    refs.py      tag, branch, untag, remove_ref: ref writes (retention.py deletes revisions on the record)
    reading.py   show, log, list, resolve, pull, manifest, verify (derived conversions recorded once)
    retention.py delete_revision and retention rules: revisions deleted on the record, never a needed one
    gc.py        gc: blobs nothing names, after a grace period
    access.py    blob_in_namespaces: what a namespace-scoped token may reach by digest
    imports.py   import_from (registry/hubs/ does the work), find_import
    jobs.py      jobs and revision checks, delegated to registry/jobs/ and registry/vllm_checks.py
    events.py    the events the service records (the outbox) and webhooks: add, ls, rm, test, deliveries

Rules shared with RemoteRegistry (push preparation, ref refusals, messages) are in registry/rules.py.
"""
from __future__ import annotations

from .access import AccessMixin
from .commits import CommitsMixin
from .events import EventsMixin
from .gc import GcMixin
from .imports import ImportsMixin
from .jobs import JobsMixin
from .push import PushMixin


class Registry(CommitsMixin, PushMixin, GcMixin, AccessMixin, ImportsMixin, JobsMixin, EventsMixin):
    """A registry on this machine: a database (SQLite by default) and a local blob store.

    `Registry(home, database_url, store)`; `.db` is its public database handle (registry/db/).
    """


__all__ = ["Registry"]
