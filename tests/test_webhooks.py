"""Events and webhooks (issue 22): every kind of event reaches a real receiver on 127.0.0.1, signed, in order,
at least once, never across namespaces, never for a change that rolled back; on SQLite and PostgreSQL.

The receivers are real HTTP servers (tests/helpers/webhook_receiver.py); one payload of every kind is parsed
with huggingface_hub's own `WebhookPayload` model. The dispatcher runs in this process, except in the test
that kills and restarts a real `swiftreg serve` and a real `swiftreg worker` mid-retry.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from registry.client import RemoteRegistry
from registry.db.models import DeliveryRecord, EventRecord, WebhookRecord
from registry.errors import ForbiddenError, RefExistsError, WebhookError, WebhookNotFoundError
from registry.service import Registry
from registry.webhooks import signing, urls
from tests.helpers.checkpoints import write_peft_lora
from tests.helpers.server import free_port, registry_env, stop
from tests.helpers.webhook_receiver import Receiver, receiving

pytestmark = pytest.mark.events

KINDS_SEEN = ("repo.created", "revision.created", "tag.created", "tag.moved", "tag.deleted", "import.completed",
              "job.succeeded", "job.failed", "validation.failed", "validation.regressed")


@pytest.fixture(autouse=True)
def _webhook_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWIFTREG_WEBHOOK_ALLOW_PRIVATE", "1")  # receivers on 127.0.0.1
    monkeypatch.setenv("SWIFTREG_WEBHOOK_BACKOFF", "0.05")
    monkeypatch.setenv("SWIFTREG_WEBHOOK_TIMEOUT", "5")
    monkeypatch.delenv("SWIFTREG_WEBHOOK_KEY", raising=False)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as r:
        yield r


def drain(reg: Registry, *, deadline: float = 30.0) -> None:
    """Run the dispatcher until nothing is pending (retries included)."""
    dispatcher = reg.dispatcher(threads=4)
    end = time.monotonic() + deadline
    try:
        while dispatcher.pending():
            if not dispatcher.run_once():
                time.sleep(0.02)
            assert time.monotonic() < end, "deliveries still pending"
    finally:
        dispatcher.close()


def checked(received: Any, secret: str) -> dict[str, Any]:
    """The payload, after the receiver's checks: the Hub's secret header and the HMAC signature."""
    assert received.header("X-Webhook-Secret") == secret
    signing.verify_headers(secret, received.body, received.headers)
    assert received.header("X-Swiftreg-Event") == received.payload["swiftreg"]["event"]
    return received.payload


# ===== every kind, signed, parsed by huggingface_hub ==========================================================

def test_every_event_kind_arrives_signed_with_its_payload_and_parses_with_huggingface_hub(
        database_url: str, tmp_path: Path, receiver: Receiver) -> None:
    from huggingface_hub import WebhookPayload

    from registry.jobs.queue import JobQueue
    from registry.jobs.revision_checks import validate_revisions

    reg = Registry(home=tmp_path / "home", database_url=database_url)
    hook = reg.add_webhook(receiver.url, "team", description="everything")
    assert hook.secret and hook.secret.startswith("whsec_") and hook.events is None
    one = reg.push(write_peft_lora(tmp_path / "a", seed=1), "team/x", tag="prod").revision
    two = reg.push(write_peft_lora(tmp_path / "b", seed=2), "team/x").revision
    reg.tag("team/x@2", "prod", force=True)
    reg.untag("team/x", "prod")
    source = {"hub": "hf", "endpoint": "https://huggingface.co", "repo": "someone/lora", "requested_revision": None,
              "commit": "c" * 40, "subfolder": ""}
    reg.push(write_peft_lora(tmp_path / "c", seed=3), "team/imported", provenance=source)
    queue = JobQueue(reg.db.engine)
    for ok in (True, False):
        job, _ = queue.submit("sleep", {"seconds": 0}, namespace="team")
        assert queue.claim("w1", ids=[job.id]) is not None
        assert queue.finish(job.id, "w1", succeeded=ok, result={"ok": ok})
    validate_revisions(reg, ["team/x@1"], run_id="night-1", checks=["integrity"])   # passes: no event
    blob = reg.store.path(next(f["sha256"] for f in reg.show("team/x@1").manifest["files"]
                               if f["path"].endswith(".safetensors")))
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[-2] ^= 0x40
    blob.write_bytes(bytes(data))
    validate_revisions(reg, ["team/x@1"], run_id="night-2", checks=["integrity"])   # regressed
    validate_revisions(reg, ["team/x@1"], run_id="night-3", checks=["integrity"])   # failed again
    drain(reg)

    got = sorted((checked(r, hook.secret) for r in receiver.unique()), key=lambda p: p["swiftreg"]["id"])
    kinds = [p["swiftreg"]["event"] for p in got]  # by event id: streams are delivered side by side
    assert kinds == ["repo.created", "revision.created", "tag.created", "revision.created", "tag.moved",
                     "tag.deleted", "repo.created", "revision.created", "import.completed", "job.succeeded",
                     "job.failed", "validation.regressed", "validation.failed"]
    assert set(KINDS_SEEN) <= set(kinds)
    for payload in got:  # huggingface_hub's own model reads every one of them
        parsed = WebhookPayload.model_validate(payload)
        assert parsed.webhook.id == str(hook.id) and parsed.webhook.version == 3
        assert parsed.repo.type == "model" and parsed.repo.owner.id == "team"
    by = {k: [p for p in got if p["swiftreg"]["event"] == k] for k in kinds}
    created = by["revision.created"][0]
    assert created["event"] == {"action": "update", "scope": "repo.content"}
    assert created["repo"]["name"] == "team/x" and created["repo"]["headSha"] == one.digest
    assert WebhookPayload.model_validate(created).repo.head_sha == one.digest
    assert created["updatedRefs"] == [{"ref": "refs/heads/main", "oldSha": None, "newSha": one.digest},
                                      {"ref": "refs/tags/prod", "oldSha": None, "newSha": one.digest}]
    rev = created["swiftreg"]["revision"]
    assert (rev["number"], rev["digest"], rev["format"], rev["tuner_type"], rev["r"]) == (1, one.digest, "peft",
                                                                                           "LORA", 4)
    assert by["revision.created"][1]["updatedRefs"] == [{"ref": "refs/heads/main", "oldSha": one.digest,
                                                          "newSha": two.digest}]
    moved = by["tag.moved"][0]
    assert moved["event"] == {"action": "update", "scope": "repo.content"}
    assert moved["swiftreg"]["ref"] == {"name": "prod", "kind": "tag", "old": {"number": 1, "digest": one.digest},
                                        "new": {"number": 2, "digest": two.digest}}
    assert moved["updatedRefs"] == [{"ref": "refs/tags/prod", "oldSha": one.digest, "newSha": two.digest}]
    deleted = by["tag.deleted"][0]
    assert deleted["event"]["action"] == "delete"
    assert deleted["updatedRefs"] == [{"ref": "refs/tags/prod", "oldSha": two.digest, "newSha": None}]
    assert by["repo.created"][1]["event"] == {"action": "create", "scope": "repo"}
    assert by["import.completed"][0]["swiftreg"]["source"]["commit"] == "c" * 40
    assert by["job.succeeded"][0]["swiftreg"]["job"]["status"] == "succeeded"
    assert by["job.failed"][0]["swiftreg"]["job"]["result"] == {"ok": False}
    regressed = by["validation.regressed"][0]["swiftreg"]["validation"]
    assert regressed["regressed"] == ["integrity"] and regressed["run_id"] == "night-2"
    assert regressed["checks"][0]["previous"]["passed"] is True and regressed["checks"][0]["regression"]
    failed = by["validation.failed"][0]["swiftreg"]["validation"]
    assert failed["failed"] == ["integrity"] and failed["regressed"] == [] and failed["run_id"] == "night-3"
    # in order per stream: team/x's sequence numbers 1, 2, 3, ... with no gap
    seqs = [p["swiftreg"]["sequence"] for p in got if p["swiftreg"]["stream"] == "team/x"]
    assert seqs == list(range(1, len(seqs) + 1))
    # every delivery recorded with its answer
    deliveries = reg.webhook_deliveries(hook.id, limit=100)
    assert len(deliveries) == len(got) and {d.status for d in deliveries} == {"succeeded"}
    assert all(d.response_status == 200 and d.response_body == "ok" and d.attempts == 1 for d in deliveries)
    reg.close()


def test_a_webhook_gets_only_the_kinds_it_asked_for_and_tests_and_redeliveries_reach_it(
        tmp_path: Path, receiver: Receiver) -> None:
    reg = Registry(home=tmp_path / "home")
    hook = reg.add_webhook(receiver.url, "team", events=["tag.moved", "tag.created"], secret="s3cret-value")
    assert hook.secret is None and hook.events == ["tag.created", "tag.moved"]
    reg.push(write_peft_lora(tmp_path / "a", seed=1), "team/x")
    reg.push(write_peft_lora(tmp_path / "b", seed=2), "team/x", tag="prod")
    reg.branch("team/x@1", "prod-branch")
    drain(reg)
    assert receiver.events() == ["tag.created", "tag.created"]
    assert receiver.received[1].payload["swiftreg"]["ref"]["kind"] == "branch"
    test = reg.test_webhook(hook.id)
    assert test.status == "succeeded" and test.event == "webhook.test" and test.response_status == 200
    assert checked(receiver.received[-1], "s3cret-value")["event"]["scope"] == "webhook"
    first = reg.webhook_deliveries(hook.id)[-1]
    again = reg.redeliver(first.id)
    assert again.redelivery_of == first.id and again.uuid != first.uuid and again.status == "pending"
    drain(reg)
    last = receiver.received[-1]
    assert last.header("X-Swiftreg-Delivery") == again.uuid and last.payload == receiver.received[0].payload
    receiver.status = 500
    failed = reg.test_webhook(hook.id)
    assert failed.status == "failed" and failed.response_status == 500 and failed.error == "HTTP 500"
    assert [h.last_status for h in reg.webhooks("team")] == ["failed"]
    with pytest.raises(WebhookNotFoundError, match="no webhook 99"):
        reg.test_webhook(99)
    with pytest.raises(WebhookError, match="unknown event kind"):
        reg.add_webhook(receiver.url, "team", events=["tag.exploded"])
    reg.remove_webhook(hook.id)
    assert reg.webhooks() == []
    reg.close()


# ===== order, at least once, isolation, rollbacks =============================================================

def test_a_receiver_down_for_a_while_gets_every_event_in_order_once_it_is_back(
        database_url: str, tmp_path: Path, receiver: Receiver) -> None:
    reg = Registry(home=tmp_path / "home", database_url=database_url)
    hook = reg.add_webhook(receiver.url, "team")
    receiver.stop()
    for i in range(4):
        reg.push(write_peft_lora(tmp_path / f"r{i}", seed=10 + i), "team/x", tag=f"v{i}")
    reg.push(write_peft_lora(tmp_path / "y", seed=30), "team/y")
    dispatcher = reg.dispatcher(threads=4)
    for _ in range(5):
        dispatcher.run_once()
        time.sleep(0.06)
    dispatcher.close()
    with reg.db.read() as session:
        rows = session.scalars(select(DeliveryRecord).order_by(DeliveryRecord.seq)).all()
        heads = {(r.stream, r.seq): r.attempts for r in rows}
    # only the head of each stream was tried (several times); nothing behind it overtook it
    assert heads[("team/x", 1)] >= 2 and heads[("team/y", 1)] >= 2
    assert all(attempts == 0 for (stream, seq), attempts in heads.items() if seq > 1)
    assert all(d.error and "ConnectError" in d.error for d in reg.webhook_deliveries(hook.id) if d.attempts)
    receiver.start()  # back, on the same port
    drain(reg)
    got = receiver.unique()
    for stream in ("team/x", "team/y"):
        seqs = [r.payload["swiftreg"]["sequence"] for r in got if r.payload["swiftreg"]["stream"] == stream]
        assert seqs == list(range(1, len(seqs) + 1)), (stream, seqs)
    with reg.db.read() as session:
        assert len(got) == session.query(EventRecord).count() == (1 + 4 * 2) + 2  # repo, then revision + tag
    reg.close()


def test_a_delivery_past_its_retry_window_is_marked_failed_and_the_next_event_goes(
        tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWIFTREG_WEBHOOK_RETRY_SECONDS", "0")
    reg = Registry(home=tmp_path / "home")
    hook = reg.add_webhook(receiver.url, "team")
    receiver.status = 503
    reg.push(write_peft_lora(tmp_path / "a", seed=1), "team/x", tag="prod")
    drain(reg)
    assert [r.payload["swiftreg"]["sequence"] for r in receiver.received] == [1, 2, 3]
    deliveries = reg.webhook_deliveries(hook.id)
    assert [(d.status, d.attempts, d.response_status) for d in deliveries] == [("failed", 1, 503)] * 3
    assert all(d.error == "HTTP 503; gave up after 1 attempts" for d in deliveries)
    monkeypatch.setenv("SWIFTREG_WEBHOOK_RETRY_SECONDS", "3600")
    receiver.status = 200
    again = reg.redeliver(deliveries[-1].id)  # the first event, by hand, once the receiver is fixed
    drain(reg)
    assert reg.webhook_deliveries(hook.id)[0].id == again.id and reg.webhook_deliveries(hook.id)[0].status == \
        "succeeded"
    assert receiver.received[-1].payload["swiftreg"]["event"] == "repo.created"
    reg.close()


def test_several_dispatchers_deliver_each_event_once_and_in_order(database_url: str, tmp_path: Path,
                                                                  receiver: Receiver) -> None:
    reg = Registry(home=tmp_path / "home", database_url=database_url)
    reg.add_webhook(receiver.url, "team")
    for i in range(6):
        reg.push(write_peft_lora(tmp_path / f"r{i}", seed=40 + i), f"team/m{i % 3}")
    dispatchers = [reg.dispatcher(worker_id=f"d{i}", threads=2, batch=2) for i in range(3)]

    def work(d: Any) -> None:
        while d.pending():
            if not d.run_once():
                time.sleep(0.01)

    threads = [threading.Thread(target=work, args=(d,)) for d in dispatchers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    got = receiver.received
    ids = [r.header("X-Swiftreg-Delivery") for r in got]
    assert len(ids) == len(set(ids)) == 3 * 3  # per repository: repo.created and two revision.created
    for stream in ("team/m0", "team/m1", "team/m2"):
        seqs = [r.payload["swiftreg"]["sequence"] for r in got if r.payload["swiftreg"]["stream"] == stream]
        assert seqs == [1, 2, 3]
    assert sum(d.succeeded for d in dispatchers) == 9
    reg.close()


def test_a_push_that_fails_leaves_no_event(database_url: str, tmp_path: Path, receiver: Receiver) -> None:
    reg = Registry(home=tmp_path / "home", database_url=database_url)
    reg.add_webhook(receiver.url, "team")
    reg.push(write_peft_lora(tmp_path / "a", seed=1), "team/x", tag="prod")
    with reg.db.read() as session:
        before = session.query(EventRecord).count()
    with pytest.raises(RefExistsError):  # refused inside the commit's transaction: rolled back
        reg.push(write_peft_lora(tmp_path / "b", seed=2), "team/x", tag="prod")
    # killed at the last moment before the commit (SIGKILL: no handler runs)
    env = registry_env(tmp_path / "home", database_url)
    env["SWIFTREG_FAILPOINTS"] = "push:before-commit"
    done = subprocess.run([sys.executable, "-m", "registry.cli", "push", str(write_peft_lora(tmp_path / "c", seed=3)),
                           "team/x", "--tag", "v2"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    with reg.db.read() as session:
        assert session.query(EventRecord).count() == before
        assert session.query(DeliveryRecord).count() == before
    assert [r.number for r in reg.log("team/x")] == [1]
    drain(reg)
    assert receiver.events() == ["repo.created", "revision.created", "tag.created"]
    reg.close()


def test_a_namespace_webhook_never_receives_another_namespace_events(tmp_path: Path) -> None:
    with receiving() as a, receiving() as b:
        reg = Registry(home=tmp_path / "home")
        reg.add_webhook(a.url, "alpha")
        reg.add_webhook(b.url, "beta")
        reg.push(write_peft_lora(tmp_path / "a", seed=1), "alpha/x", tag="prod")
        reg.push(write_peft_lora(tmp_path / "b", seed=2), "beta/x", tag="prod")
        reg.push(write_peft_lora(tmp_path / "c", seed=3), "gamma/x")
        drain(reg)
        assert {r.payload["repo"]["name"] for r in a.received} == {"alpha/x"} and len(a.received) == 3
        assert {r.payload["repo"]["name"] for r in b.received} == {"beta/x"} and len(b.received) == 3
        reg.close()


# ===== outbound safety and secrets ============================================================================

@pytest.mark.parametrize("url, message", [
    ("ftp://example.com/hook", "only http:// and https://"),
    ("https://user:pw@example.com/hook", "must not carry a user or password"),
    ("https://example.com/hook#x", "#fragment"),
    ("https:///hook", "names no host"),
    ("http://example.com/a b", "spaces or control characters"),
    ("http://127.0.0.1:9/hook", "private or loopback"),
    ("http://localhost/hook", "private or loopback"),
    ("http://10.1.2.3/hook", "private or loopback"),
    ("http://[::1]/hook", "private or loopback"),
    ("http://169.254.169.254/latest/meta-data", "private or loopback"),
])
def test_webhook_urls_are_checked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, url: str, message: str) -> None:
    monkeypatch.delenv("SWIFTREG_WEBHOOK_ALLOW_PRIVATE")
    reg = Registry(home=tmp_path / "home")
    with pytest.raises(WebhookError, match=message):
        reg.add_webhook(url, "team")
    assert urls.check("https://hooks.example.com/x?y=1") == "https://hooks.example.com/x?y=1"
    reg.close()


def test_a_private_target_is_refused_at_delivery_time_too(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                          receiver: Receiver) -> None:
    reg = Registry(home=tmp_path / "home")
    hook = reg.add_webhook(receiver.url, "team")
    monkeypatch.delenv("SWIFTREG_WEBHOOK_ALLOW_PRIVATE")
    delivery = reg.test_webhook(hook.id)
    assert delivery.status == "failed" and "private or loopback" in (delivery.error or "")
    assert receiver.received == []
    reg.close()


def test_a_delivery_connects_to_the_address_it_checked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                       receiver: Receiver) -> None:
    """No DNS rebinding between the check and the connection: the dispatcher connects to the address it checked,
    with the name in Host (and as the TLS server name for https); a name with any private address is refused."""
    import socket

    real = socket.getaddrinfo
    names = {"hooks.example.com": ["93.184.216.34"], "rebind.example.com": ["93.184.216.34", "10.0.0.7"],
             "receiver.example.com": ["127.0.0.1"], "v6.example.com": ["2606:2800:220:1::1"]}

    def resolve(host: str, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        if host not in names:  # the connection itself (to the checked address)
            return real(host, port, *args, **kwargs)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in names[host]]

    monkeypatch.setattr(urls.socket, "getaddrinfo", resolve)
    monkeypatch.delenv("SWIFTREG_WEBHOOK_ALLOW_PRIVATE")
    target = urls.pinned("https://hooks.example.com:8443/in?x=1")
    assert target == urls.Target("https://93.184.216.34:8443/in?x=1", "hooks.example.com:8443", "hooks.example.com")
    assert urls.pinned("http://v6.example.com/in").url == "http://[2606:2800:220:1::1]/in"
    with pytest.raises(WebhookError, match=r"rebind.example.com is a private or loopback address \(10.0.0.7\)"):
        urls.pinned("https://rebind.example.com/in")
    # end to end: a name that passes the check (loopback waved through here) is connected to by its checked address
    reg = Registry(home=tmp_path / "home")
    hook = reg.add_webhook(f"http://receiver.example.com:{receiver.port}/hook", "team")
    monkeypatch.setattr(urls, "check_address", lambda host, address: None)
    assert reg.test_webhook(hook.id).status == "succeeded"
    assert receiver.received[0].header("Host") == f"receiver.example.com:{receiver.port}"
    # https: the certificate is verified against the name, though the connection goes to the address
    cert, key = _certificate(tmp_path / "tls", "receiver.example.com")
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    with receiving(tls=(cert, key)) as secure:
        hook = reg.add_webhook(f"https://receiver.example.com:{secure.port}/hook", "team")
        delivered = reg.test_webhook(hook.id)
        assert delivered.status == "succeeded", delivered.error
        assert secure.received[0].header("Host") == f"receiver.example.com:{secure.port}"
        names["other.example.com"] = ["127.0.0.1"]  # a name the certificate does not cover is refused by TLS
        other = reg.add_webhook(f"https://other.example.com:{secure.port}/hook", "team")
        refused = reg.test_webhook(other.id)
        assert refused.status == "failed" and "CERTIFICATE_VERIFY_FAILED" in (refused.error or "")
    reg.close()


def _certificate(folder: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for the DNS name `name` (its own CA) and its key."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                       serialization.PrivateFormat.TraditionalOpenSSL,
                                                       serialization.NoEncryption()))
    return folder / "cert.pem", folder / "key.pem"


def test_secrets_are_encrypted_at_rest_and_answers_are_capped_timed_out_and_not_redirected(
        tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    reg = Registry(home=home)
    hook = reg.add_webhook(receiver.url, "team", secret="plain-secret-1234")
    key = home / "webhook.key"
    assert key.stat().st_mode & 0o777 == 0o600
    with reg.db.read() as session:
        stored = session.scalars(select(WebhookRecord.secret)).one()
    assert "plain-secret-1234" not in stored
    reg.db.close()
    assert b"plain-secret-1234" not in b"".join(p.read_bytes() for p in home.glob("registry.db*"))
    receiver.answer = b"x" * (1 << 20)
    big = reg.test_webhook(hook.id)
    assert big.status == "succeeded" and len(big.response_body or "") == 2000
    receiver.answer, receiver.status, receiver.location = b"", 302, "http://127.0.0.1:1/elsewhere"
    moved = reg.test_webhook(hook.id)
    assert moved.status == "failed" and "not followed" in (moved.error or "")
    monkeypatch.setenv("SWIFTREG_WEBHOOK_TIMEOUT", "0.3")
    receiver.status, receiver.location, receiver.delay = 200, None, 1.5
    slow = reg.test_webhook(hook.id)
    assert slow.status == "failed" and "Timeout" in (slow.error or "")
    # another key cannot decrypt it: one clear line, no secret in it
    monkeypatch.setenv("SWIFTREG_WEBHOOK_KEY", "A" * 43 + "=")
    wrong = reg.test_webhook(hook.id)
    assert wrong.status == "failed" and "SWIFTREG_WEBHOOK_KEY" in (wrong.error or "")
    reg.close()


def test_a_signature_is_refused_when_the_body_the_secret_or_the_time_is_wrong() -> None:
    body = b'{"a":1}'
    header = signing.headers("k", body, delivery="d", kind="tag.moved", now=1_000_000)[signing.SIGNATURE_HEADER]
    assert signing.verify("k", body, header, now=1_000_100) == 1_000_000
    for secret, data, now, message in [("k", b'{"a":2}', 1_000_100, "does not match"),
                                       ("other", body, 1_000_100, "does not match"),
                                       ("k", body, 1_000_000 + 301, "more than 300 s")]:
        with pytest.raises(signing.SignatureError, match=message):
            signing.verify(secret, data, header, now=now)
    with pytest.raises(signing.SignatureError, match="no X-Swiftreg-Signature"):
        signing.verify("k", body, None)


# ===== the command line =======================================================================================

def test_the_webhook_commands(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, receiver: Receiver) -> None:
    from registry.cli import main

    monkeypatch.setenv("SWIFTREG_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("SWIFTREG_URL", raising=False)
    monkeypatch.delenv("SWIFTREG_DATABASE_URL", raising=False)
    run = CliRunner().invoke
    added = run(main, ["webhook", "add", receiver.url, "--namespace", "team", "--event", "tag.moved"])
    assert added.exit_code == 0, added.output
    assert "webhook 1: team -> " in added.output and "whsec_" in added.output
    listed = run(main, ["webhook", "ls"])
    assert "tag.moved" in listed.output and "whsec_" not in listed.output
    tested = run(main, ["webhook", "test", "1"])
    assert tested.exit_code == 0 and "webhook.test" in tested.output and "succeeded" in tested.output
    shown = run(main, ["webhook", "deliveries", "1", "--json"])
    assert '"response_status": 200' in shown.output
    again = run(main, ["webhook", "redeliver", "1"])
    assert again.exit_code == 0 and "delivery 2 queued" in again.output
    dispatched = run(main, ["webhook", "dispatch", "--exit-when-idle", "--poll", "0.05"])
    assert dispatched.exit_code == 0 and len(receiver.received) == 2
    bad = run(main, ["webhook", "add", "ftp://x/y", "--namespace", "team"])
    assert bad.exit_code == 1 and "only http:// and https://" in bad.output and "Traceback" not in bad.output
    receiver.status = 503
    assert run(main, ["webhook", "test", "1"]).exit_code == 1
    assert run(main, ["webhook", "rm", "1"]).output.strip() == "removed webhook 1"
    assert "no webhook 1" in run(main, ["webhook", "rm", "1"]).output


# ===== a server and a worker, killed and restarted mid-retry ==================================================

def _spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "registry.cli", *args], env=env, stdout=log.open("a"),
                            stderr=subprocess.STDOUT)


def _serve(home: Path, database_url: str, env: dict[str, str], port: int) -> subprocess.Popen:
    import httpx

    process = _spawn(["serve", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"], env,
                     home.parent / "server.log")
    deadline = time.monotonic() + 60
    while True:
        assert process.poll() is None, (home.parent / "server.log").read_text()[-3000:]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline
        time.sleep(0.1)


def _wait(condition: Any, what: str, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, what
        time.sleep(0.05)


def test_a_server_and_a_worker_killed_mid_retry_lose_no_event(database_url: str, tmp_path: Path,
                                                              receiver: Receiver) -> None:
    from registry import tokens

    home = tmp_path / "home"
    home.mkdir()
    env = registry_env(home, database_url)
    env.update(SWIFTREG_WEBHOOK_ALLOW_PRIVATE="1", SWIFTREG_WEBHOOK_BACKOFF="0.05")
    local = Registry(home=home, database_url=database_url)
    admin, _ = tokens.create(local, "admin", "ops", ["team"])
    other, _ = tokens.create(local, "admin", "ops", ["elsewhere"])
    port = free_port()
    server = _serve(home, database_url, env, port)
    worker = _spawn(["worker", "--poll", "0.1"], env, tmp_path / "worker.log")
    try:
        remote = RemoteRegistry(f"http://127.0.0.1:{port}", admin, home=tmp_path / "client")
        hook = remote.add_webhook(receiver.url, "team")
        assert hook.secret and [h.id for h in remote.webhooks()] == [hook.id]
        stranger = RemoteRegistry(f"http://127.0.0.1:{port}", other, home=tmp_path / "client2")
        assert stranger.webhooks() == []
        with pytest.raises(WebhookNotFoundError):
            stranger.webhook_deliveries(hook.id)
        with pytest.raises(ForbiddenError):
            stranger.add_webhook(receiver.url, "team")
        receiver.status = 500  # the receiver fails: every delivery is being retried
        for i in range(3):
            remote.push(write_peft_lora(tmp_path / f"r{i}", seed=50 + i), "team/x", tag=f"v{i}")
        _wait(lambda: any(d.attempts >= 2 for d in remote.webhook_deliveries(hook.id)), "no retry seen")
        server.kill()
        worker.kill()
        server.wait()
        worker.wait()
        local.push(write_peft_lora(tmp_path / "r9", seed=59), "team/x", tag="v9")  # written while both are down
        receiver.status = 200
        server = _serve(home, database_url, env, port)
        worker = _spawn(["worker", "--poll", "0.1"], env, tmp_path / "worker.log")
        with local.db.read() as session:
            events = session.query(EventRecord).count()
        _wait(lambda: all(d.status == "succeeded" for d in remote.webhook_deliveries(hook.id, limit=100)),
              "not every event delivered after the restart")
        delivered = [checked(r, hook.secret) for r in receiver.unique()]
        seen = {(p["swiftreg"]["stream"], p["swiftreg"]["sequence"]) for p in delivered}
        assert len(seen) == events == 1 + 4 * 2  # repo.created, then revision.created + tag.created per push
        seqs = [p["swiftreg"]["sequence"] for p in delivered]
        assert sorted(set(seqs)) == list(range(1, events + 1))
        firsts = {}
        for s in seqs:  # every first arrival is in order (a retry may repeat an earlier one, never skip one)
            firsts.setdefault(s, len(firsts))
        assert list(firsts) == sorted(firsts)
        redelivered = remote.redeliver(remote.webhook_deliveries(hook.id)[0].id)
        _wait(lambda: remote.webhook_deliveries(hook.id)[0].status == "succeeded", "redelivery not sent")
        assert receiver.received[-1].header("X-Swiftreg-Delivery") == redelivered.uuid
        tested = remote.test_webhook(hook.id)  # sent by the server itself, answered at once
        assert tested.status == "succeeded" and tested.response_status == 200 and tested.event == "webhook.test"
        remote.remove_webhook(hook.id)
        assert remote.webhooks() == []
    finally:
        stop(server)
        stop(worker)
        local.close()
