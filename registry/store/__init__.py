"""Content-addressed blob storage: files named by the sha256 of their bytes.

`BlobStore` is the interface (local directory now, S3 later); `LocalBlobStore` keeps blobs under
`root/sha256/ab/cdef...`. See registry/store/local.py for the write protocol.
"""
from registry.store.base import BlobInfo, BlobStore, Progress
from registry.store.digests import (CHUNK_SIZE, Digest, digest_hex, format_digest, is_digest, sha256_file,
                                    validate_digest)
from registry.store.errors import BlobDigestMismatch, BlobNotFound, CorruptBlob, InvalidDigest, StoreError
from registry.store.local import LocalBlobStore

__all__ = [
    "BlobDigestMismatch",
    "BlobInfo",
    "BlobNotFound",
    "BlobStore",
    "CHUNK_SIZE",
    "CorruptBlob",
    "Digest",
    "InvalidDigest",
    "LocalBlobStore",
    "Progress",
    "StoreError",
    "digest_hex",
    "format_digest",
    "is_digest",
    "sha256_file",
    "validate_digest",
]
