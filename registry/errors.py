"""Every error the registry raises, as one tree.

    RegistryError                   anything a registry operation refuses
    ├── InvalidIdError              `namespace/name[@ref]` does not parse, or a name is not allowed
    ├── NotFoundError               no such adapter, base model, ref or revision
    ├── AmbiguousRefError           a digest prefix matches more than one revision
    ├── RefExistsError              a tag already points elsewhere (use --force)
    ├── InvalidCheckpointError      push refused: the checkpoint fails validation (see .problems)
    ├── UnsafePathError             a file name inside a checkpoint escapes it or is not portable
    ├── IntegrityError              stored bytes do not match their digest (never served)
    ├── BlobsMissingError           a manifest commit names blobs not uploaded yet (see .missing)
    ├── StoreError                  the blob store itself (registry/store/errors.py has its subtree)
    ├── HubError                    an import from the Hugging Face Hub or ModelScope failed (registry/hubs/)
    │   ├── HubNotFoundError        no such repository or revision on the hub (also a NotFoundError)
    │   └── HubNoAdapterError       the hub repository (or --subfolder) holds no adapter, or only pickles
    ├── WorkerError                 tensor work refused (registry/tensors/errors.py has its subtree)
    └── JobError                    a job cannot be submitted, found or changed (registry/jobs/)
        ├── JobNotFoundError        no job with that id (also a NotFoundError)
        ├── InvalidJobError         unknown kind, or parameters the kind does not take
        ├── JobConflictError        an idempotency key reused for a different job
        └── JobStateError           the job is already finished (cancel), or not this worker's any more

Format problems from the converters (converters.FormatError) pass through unchanged: they already
name the file, key or field at fault. The CLI prints any of these as one line and exits 1.
"""
from __future__ import annotations

from typing import Sequence


class RegistryError(Exception):
    """Base class of everything the registry refuses."""


class InvalidIdError(RegistryError, ValueError):
    """An identifier or name that the grammar in DESIGN.md section 2 does not allow."""


class NotFoundError(RegistryError, LookupError):
    """The named adapter, base model, ref or revision does not exist."""


class AmbiguousRefError(RegistryError):
    """A digest prefix matches several revisions: give more hex digits."""


class RefExistsError(RegistryError):
    """Tags are immutable: moving one needs --force."""


class InvalidCheckpointError(RegistryError):
    """Validation found errors; `.problems` lists them."""

    def __init__(self, message: str, problems: Sequence[object] = ()) -> None:
        self.problems = list(problems)
        super().__init__(message)


class UnsafePathError(RegistryError):
    """A path inside a checkpoint is absolute, climbs out with '..', is a link, or is not portable."""


class IntegrityError(RegistryError):
    """Bytes on disk no longer match the digest they are stored under."""


class BlobsMissingError(RegistryError):
    """A manifest names blobs the store does not hold yet: upload them, then commit again."""

    def __init__(self, message: str, missing: Sequence[str]) -> None:
        self.missing = list(missing)
        super().__init__(message)


class HubError(RegistryError):
    """An import from a hub failed (unreachable, refused, dropped mid-download): nothing was registered."""


class HubNotFoundError(HubError, NotFoundError):
    """The hub has no such repository or revision (or it is private and no token was given)."""


class HubNoAdapterError(HubError):
    """The hub repository holds no adapter checkpoint where it was looked for (or only pickle files)."""



class JobError(RegistryError):
    """A job operation refused (registry/jobs/)."""


class JobNotFoundError(JobError, NotFoundError):
    """No job with that id."""


class InvalidJobError(JobError, ValueError):
    """The job's kind is unknown or its parameters are not what that kind takes."""


class JobConflictError(JobError):
    """The idempotency key names a job submitted with another kind or other parameters."""


class JobStateError(JobError):
    """The job is in a state that does not allow this (a finished job cannot be cancelled)."""


class JobCancelledError(JobError):
    """The job was cancelled (or given to another worker) while it ran: its result is not pushed."""
