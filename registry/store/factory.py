"""The one place a blob store is chosen: `SWIFTREG_STORE_URL` (or `swiftreg serve --store`).

    unset, ""              the local store in HOME/blobs
    file:///path, /path    a local store in that folder
    s3://bucket/prefix     object storage (registry/store/s3.py; boto3 is imported only then)

Google Cloud Storage, Cloudflare R2, MinIO and Ceph are reached as `s3://` with AWS_ENDPOINT_URL naming their
S3-compatible endpoint (README, "Object storage").
"""
from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from .. import constants
from .base import BlobStore
from .errors import StoreError
from .local import LocalBlobStore


def open_store(url: str | Path | None, home: Path) -> BlobStore:
    """The store `url` names (None: SWIFTREG_STORE_URL, else HOME/blobs)."""
    value = str(url) if url is not None else (constants.store_url() or "")
    if not value:
        return LocalBlobStore(Path(home) / "blobs")
    if value.startswith("s3://"):
        try:
            from .s3 import S3BlobStore
        except ImportError as exc:  # pragma: no cover - the s3 extra not installed
            raise StoreError(f"{value}: object storage needs boto3: pip install 'swiftreg[s3]' ({exc})") from None
        return S3BlobStore(value, cache=Path(home) / "blob-cache")  # verified blobs kept near (LRU)
    if value.startswith("file://"):
        return LocalBlobStore(Path(unquote(urlsplit(value).path)))
    if "://" in value:
        scheme = value.split("://", 1)[0]
        hint = (" (for Google Cloud Storage use s3://BUCKET with AWS_ENDPOINT_URL=https://storage.googleapis.com "
                "and an HMAC key)" if scheme in ("gs", "gcs") else "")
        raise StoreError(f"{value!r}: unknown blob store scheme {scheme!r}: use s3://BUCKET/PREFIX, file:///PATH "
                         f"or a folder{hint}")
    return LocalBlobStore(Path(value).expanduser())


def is_remote(store: BlobStore) -> bool:
    """Whether the store keeps no local files (readers copy, servers redirect)."""
    return bool(getattr(store, "remote", False))
