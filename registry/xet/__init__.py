"""Xet, the content-addressed upload protocol of huggingface_hub + hf_xet: hashing, xorbs, shards, the store.

The wire facts (read from hf_xet 1.8.0's traffic and xet-core's source) are in docs/HF_PROTOCOL.md's Xet
section. This package knows no HTTP: `registry/server/xet.py` translates the routes onto it.

- `hashing`: keyed BLAKE3 chunk hashes, the merkle aggregation that names xorbs and files, hex forms.
- `xorb`: a xorb's chunks parsed, decompressed (none, LZ4 frame, byte-grouped LZ4) and verified.
- `shard`: the shard format (file reconstructions, xorb chunk lists) parsed; dedup answers written.
- `store`: verified xorbs and shards on disk, the global-dedup chunk index, file reconstruction streamed
  into the blob store, and gc.
"""
from __future__ import annotations

from pathlib import Path

from ..store.base import BlobStore


def root_beside(store: BlobStore, home: Path) -> Path:
    """Where the Xet half of the store lives: `xet/` under a local blob store's root, else under the home
    (importing this needs neither blake3 nor lz4, so gc can ask whether there is anything to sweep)."""
    root = getattr(store, "root", None)
    return (Path(root) if root is not None else home) / "xet"
