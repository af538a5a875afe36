"""The blob store on a real filesystem: integrity, dedup, strict digests, concurrency, crashes."""
from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from registry.store import (
    BlobDigestMismatch,
    BlobInfo,
    BlobNotFound,
    CorruptBlob,
    InvalidDigest,
    LocalBlobStore,
    StoreError,
    is_digest,
    sha256_file,
)

REPO_ROOT = Path(__file__).resolve().parents[1]


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())


@pytest.fixture
def store(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    path = tmp_path / "sample.bin"
    path.write_bytes(os.urandom(3 * 1024 * 1024 + 17))  # not a multiple of the chunk size
    return path


# ----- round trips and layout -----------------------------------------------------------------

def test_put_file_round_trip_and_layout(store: LocalBlobStore, sample: Path) -> None:
    data = sample.read_bytes()
    seen: list[int] = []
    info = store.put_file(sample, progress=seen.append)

    assert info == BlobInfo(digest_of(data), len(data))
    assert sum(seen) == len(data)
    assert store.exists(info.digest) and store.size(info.digest) == len(data)
    with store.open(info.digest) as f:
        assert f.read() == data
    hexdigest = info.digest.removeprefix("sha256:")
    path = store.path(info.digest)
    assert path == store.root / "sha256" / hexdigest[:2] / hexdigest[2:]
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert list(store.iter_digests()) == [info.digest]
    assert store.verify(info.digest)
    assert files_under(store.root / "tmp") == []


def test_put_stream_with_expected(store: LocalBlobStore) -> None:
    chunks = [b"hello ", b"", bytearray(b"blob "), memoryview(b"store")]
    expected = digest_of(b"hello blob store")
    info = store.put_stream(chunks, expected=expected)
    assert info == BlobInfo(expected, 16)
    with store.open(expected) as f:
        assert f.read() == b"hello blob store"


def test_empty_blob(store: LocalBlobStore) -> None:
    info = store.put_stream([])
    assert info == BlobInfo(digest_of(b""), 0)
    assert store.verify(info.digest)


def test_sha256_file_and_is_digest(sample: Path) -> None:
    digest = sha256_file(sample)
    assert digest == digest_of(sample.read_bytes())
    assert is_digest(digest)
    assert not is_digest(digest.upper()) and not is_digest(None) and not is_digest(digest + "\n")


def test_copy_to_writes_verified_copy(store: LocalBlobStore, sample: Path, tmp_path: Path) -> None:
    info = store.put_file(sample)
    dst = tmp_path / "out" / "adapter_model.safetensors"
    dst.parent.mkdir()
    dst.write_bytes(b"old contents")  # replaced, like cp
    seen: list[int] = []
    store.copy_to(info.digest, dst, progress=seen.append)
    assert dst.read_bytes() == sample.read_bytes()
    assert sum(seen) == info.size
    assert os.listdir(dst.parent) == [dst.name]


def test_missing_blob_errors(store: LocalBlobStore, tmp_path: Path) -> None:
    absent = digest_of(b"never stored")
    assert not store.exists(absent)
    for call in (store.open, store.path, store.size, store.mtime, store.touch, store.delete, store.verify,
                 lambda d: store.copy_to(d, tmp_path / "dst")):
        with pytest.raises(BlobNotFound, match=absent):
            call(absent)
    assert not (tmp_path / "dst").exists()
    store.delete(absent, missing_ok=True)


def test_delete(store: LocalBlobStore) -> None:
    info = store.put_stream([b"to be collected"])
    store.delete(info.digest)
    assert not store.exists(info.digest)
    assert list(store.iter_digests()) == []


def test_iter_digests_skips_strays(store: LocalBlobStore) -> None:
    infos = sorted(store.put_stream([bytes([i])]).digest for i in range(5))
    (store.root / "sha256" / "zz").mkdir()
    (store.root / "sha256" / "README").write_text("not a blob")
    shard = store.path(infos[0]).parent
    (shard / "short").write_text("not a blob")
    assert list(store.iter_digests()) == infos


# ----- dedup -------------------------------------------------------------------------------------

@pytest.mark.parametrize("with_expected", [False, True])
def test_second_put_rewrites_nothing_but_refreshes_mtime(store: LocalBlobStore, sample: Path,
                                                         with_expected: bool) -> None:
    first = store.put_file(sample)
    path = store.path(first.digest)
    os.utime(path, (1_000_000, 1_000_000))  # pretend it was stored long ago
    inode = path.stat().st_ino

    second = store.put_file(sample, expected=first.digest if with_expected else None)

    assert second == first
    assert path.stat().st_ino == inode  # the original file, not a rewrite
    assert store.mtime(first.digest) > time.time() - 60  # refreshed so a gc with a grace period spares it
    assert files_under(store.root) == [path]
    assert files_under(store.root / "tmp") == []


def test_same_content_from_stream_and_file_is_one_blob(store: LocalBlobStore, sample: Path) -> None:
    a = store.put_file(sample)
    b = store.put_stream([sample.read_bytes()])
    assert a == b and list(store.iter_digests()) == [a.digest]


# ----- expected digests ---------------------------------------------------------------------------

def test_expected_mismatch_stores_nothing(store: LocalBlobStore, sample: Path) -> None:
    wrong = digest_of(b"something else")
    with pytest.raises(BlobDigestMismatch) as caught:
        store.put_file(sample, expected=wrong)
    assert caught.value.expected == wrong
    assert caught.value.actual == sha256_file(sample)
    assert str(sample) in str(caught.value) and "nothing was stored" in str(caught.value)
    with pytest.raises(BlobDigestMismatch):
        store.put_stream([b"abc"], expected=wrong)
    assert files_under(store.root) == []


def test_expected_mismatch_against_existing_blob(store: LocalBlobStore, sample: Path, tmp_path: Path) -> None:
    """An already-stored expected digest does not let different content through."""
    assert store.put_stream([sample.read_bytes()])  # content present too: still a mismatch, not a dedup
    other = store.put_stream([b"the real blob"])
    with pytest.raises(BlobDigestMismatch):
        store.put_file(sample, expected=other.digest)
    assert sorted(store.iter_digests()) == sorted([other.digest, sha256_file(sample)])


# ----- missing() ------------------------------------------------------------------------------

def test_missing_order_and_duplicates(store: LocalBlobStore) -> None:
    present = store.put_stream([b"present"]).digest
    a, b, c = (digest_of(x) for x in (b"a", b"b", b"c"))
    assert store.missing([c, present, a, c, b, a, present]) == [c, a, b]
    assert store.missing([present, present]) == []
    assert store.missing([]) == []
    assert store.missing(iter([b, a])) == [b, a]  # any iterable


# ----- corruption ---------------------------------------------------------------------------------

def corrupt(store: LocalBlobStore, digest: str, offset: int = 1234) -> None:
    path = store.path(digest)
    path.chmod(0o644)
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))


def test_verify_detects_flipped_byte(store: LocalBlobStore, sample: Path) -> None:
    info = store.put_file(sample)
    assert store.verify(info.digest)
    corrupt(store, info.digest)
    assert not store.verify(info.digest)


def test_copy_to_corrupt_blob_leaves_nothing(store: LocalBlobStore, sample: Path, tmp_path: Path) -> None:
    info = store.put_file(sample)
    corrupt(store, info.digest, offset=info.size - 1)
    out = tmp_path / "out"
    out.mkdir()
    dst = out / "adapter_model.safetensors"

    with pytest.raises(CorruptBlob) as caught:
        store.copy_to(info.digest, dst)

    actual = "sha256:" + hashlib.sha256(store.path(info.digest).read_bytes()).hexdigest()
    assert caught.value.digest == info.digest and caught.value.actual == actual
    message = str(caught.value)
    assert info.digest in message and actual in message and "re-push" in message and "gc" in message
    assert os.listdir(out) == []  # neither dst nor a temp file
    assert isinstance(caught.value, StoreError)


# ----- strict digests -----------------------------------------------------------------------------

GOOD_HEX = "ab" * 32
BAD_DIGESTS = [
    "sha256:../../etc/passwd",
    "sha256:" + GOOD_HEX.upper(),
    "sha256:" + GOOD_HEX[:-1],
    "sha256:" + GOOD_HEX + "a",
    GOOD_HEX,
    "sha512:" + GOOD_HEX,
    "SHA256:" + GOOD_HEX,
    "sha256:" + GOOD_HEX + "\n",
    " sha256:" + GOOD_HEX,
    "sha256:" + GOOD_HEX[:62] + "/x",
    "sha256:" + "../" * 21 + "a",
    "",
    None,
    b"sha256:" + GOOD_HEX.encode(),
]


def store_calls(store: LocalBlobStore, sample: Path, tmp_path: Path):
    return {
        "exists": store.exists,
        "size": store.size,
        "open": store.open,
        "path": store.path,
        "verify": store.verify,
        "delete": store.delete,
        "touch": store.touch,
        "mtime": store.mtime,
        "copy_to": lambda d: store.copy_to(d, tmp_path / "dst"),
        "missing": lambda d: store.missing([digest_of(b"x"), d]),
        "put_file": lambda d: store.put_file(sample, expected=d),
        "put_stream": lambda d: store.put_stream([b"data"], expected=d),
    }


@pytest.mark.parametrize("bad", BAD_DIGESTS, ids=repr)
def test_invalid_digests_rejected_everywhere(store: LocalBlobStore, sample: Path, tmp_path: Path,
                                             bad: object) -> None:
    assert not is_digest(bad)
    for name, call in store_calls(store, sample, tmp_path).items():
        if bad is None and name.startswith("put_"):
            continue  # expected=None means "no expectation", not a digest
        with pytest.raises(InvalidDigest, match="invalid blob digest"):
            call(bad)
    assert files_under(store.root) == []
    assert not (tmp_path / "dst").exists()


# ----- concurrency and crashes -----------------------------------------------------------------

def _concurrent_put(root: str, path: str, barrier) -> str:
    barrier.wait()
    return LocalBlobStore(root).put_file(Path(path)).digest


def test_concurrent_writers_of_one_blob(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    LocalBlobStore(root)
    src = tmp_path / "five_mb.bin"
    src.write_bytes(os.urandom(5 * 1024 * 1024))
    writers = 4
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Manager().Barrier(writers)
    with ctx.Pool(writers) as pool:
        digests = pool.starmap(_concurrent_put, [(str(root), str(src), barrier)] * writers)

    store = LocalBlobStore(root)
    expected = sha256_file(src)
    assert digests == [expected] * writers
    assert list(store.iter_digests()) == [expected]
    assert store.verify(expected)
    assert files_under(store.root) == [store.path(expected)]
    assert store.stale_temp_files(older_than=0) == []


SLOW_WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from registry.store import LocalBlobStore

    def chunks():
        for i in range(10_000):
            yield bytes([i % 256]) * (256 * 1024)
            if i == 3:
                print("writing", flush=True)
            time.sleep(0.01)

    LocalBlobStore(Path(sys.argv[1])).put_stream(chunks())
    print("finished", flush=True)
""")


def test_killed_writer_leaves_only_a_temp_file(store: LocalBlobStore) -> None:
    pythonpath = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(store.root)], stdout=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONPATH=pythonpath))
    with proc:  # closes the pipe and reaps the child however the test goes
        try:
            assert proc.stdout.readline().strip() == "writing"
            deadline = time.monotonic() + 10
            while not any(p.stat().st_size > 0 for p in files_under(store.root / "tmp")):
                assert time.monotonic() < deadline, "the writer never wrote to its temp file"
                time.sleep(0.01)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL

    assert files_under(store.root / "sha256") == []  # no partial bytes under a final name
    assert list(store.iter_digests()) == []
    leftovers = store.stale_temp_files(older_than=0)
    assert len(leftovers) == 1 and leftovers[0].parent == store.root / "tmp"
    assert store.stale_temp_files(older_than=3600) == []  # a gc grace period spares recent ones
    assert store.remove_temp_files(older_than=0) == leftovers
    assert files_under(store.root) == []


def test_temp_removed_mid_write_is_a_clear_error(store: LocalBlobStore) -> None:
    """A gc run with older_than=0 during a write: the writer fails loudly and stores nothing."""
    def chunks():
        yield b"first half "
        assert store.remove_temp_files(older_than=0)
        yield b"second half"

    with pytest.raises(StoreError, match="removed while it was being written"):
        store.put_stream(chunks())
    assert files_under(store.root) == []
