"""The error tree (registry/errors.py) and its wire form: every class a client can meet, raised on a real
server, comes back as the same class with the same message and extra attributes.

- Every class of the tree (RegistryError's and converters.FormatError's subclasses, found by walking
  them, so a new class is covered without editing this file) is raised by a test-only route of the
  real app (`create_app(Registry(...))`, uvicorn on 127.0.0.1) and read through the client transport.
- Real operations through a real `swiftreg serve` raise what the local Registry raises for the same call.
- The tree is consistent: unique codes, 4xx/5xx statuses, and the drawn trees list every class.
"""
from __future__ import annotations

import inspect
import json
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest
import uvicorn

import converters
import converters.errors
import registry.errors
import registry.store.errors
import registry.tensors.errors
from converters.validation import Problem
from registry.client import RemoteRegistry
from registry.client.transport import DEFAULT_TIMEOUT, Http
from registry.errors import (
    AccessDeniedError,
    FormatError,
    NotFoundError,
    RefExistsError,
    RegistryError,
    RemoteError,
    UnauthorizedError,
    fields_of,
    from_payload,
    status_of,
    to_payload,
    tree,
)
from registry.server.app import create_app
from registry.service import Registry
from registry.vllm_checks import Verdict
from tests.helpers.checkpoints import write_peft_lora, write_swift_lora
from tests.helpers.databases import DATABASES, create_postgres_database, drop_postgres_database
from tests.helpers.server import Server, free_port

pytestmark = pytest.mark.server

DIGEST = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32


def every_class() -> list[type[Exception]]:
    """Every class of the tree, by walking the subclasses of its two roots."""
    tree()  # loads the subtree modules (registry/store/errors.py, registry/tensors/errors.py)
    found: list[type[Exception]] = []
    todo: list[type[Exception]] = [RegistryError, FormatError]
    while todo:
        cls = todo.pop(0)
        if cls not in found:
            found.append(cls)
            todo.extend(cls.__subclasses__())
    return found


#: Constructor arguments by parameter name: a class with a parameter not named here fails loudly, so a new
#: signature gets a sample here rather than escaping the round trip.
SAMPLES: dict[str, Callable[[type[Exception]], Any]] = {
    "message": lambda cls: f"{cls.__name__} says: what went wrong, and what to do (ünïcode kept)",
    "problems": lambda cls: [Problem("default", "config.r", "must be a positive integer, got 'x'"),
                             Problem("default", "adapter_model.safetensors", "no tensors", "warning")],
    "missing": lambda cls: [DIGEST, OTHER],
    "needed_by": lambda cls: ["tag v1", "revision team/merged@2 (lineage)"],
    "verdict": lambda cls: Verdict("team/x@1", 16),
    "digest": lambda cls: DIGEST,
    "expected": lambda cls: DIGEST,
    "actual": lambda cls: OTHER,
    "size": lambda cls: 1234,
    "value": lambda cls: "sha256:../../etc/passwd",
    "where": lambda cls: Path("/srv/registry/blobs"),
    "source": lambda cls: Path("/home/me/ckpt/adapter_model.safetensors"),
    "path": lambda cls: Path("/home/me/ckpt/adapter_config.json"),
    "offset": lambda cls: 4096,
    "dependency": lambda cls: "database",
    "retry_after": lambda cls: 7,
    "writing": lambda cls: "blob sha256:" + "ab" * 32,
    "quarantined": lambda cls: True,
    "device": lambda cls: "cuda:1",
    "shard": lambda cls: "model-00002-of-00004.safetensors",
    "needed_bytes": lambda cls: 2 * 2**30,
    "retryable": lambda cls: True,
    "status": lambda cls: None,
    "code": lambda cls: None,
    "headers": lambda cls: {"X-Swiftreg-Test": cls.__name__},
}


def sample(cls: type[Exception]) -> Exception:
    """An instance of `cls` made through its own constructor, every parameter given."""
    params = [p for p in inspect.signature(cls.__init__).parameters.values()
              if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if not params:  # Exception's own constructor
        return cls(SAMPLES["message"](cls))
    missing = [p.name for p in params if p.name not in SAMPLES]
    assert not missing, f"{cls.__name__}({', '.join(missing)}): add a sample value to SAMPLES"
    args = [SAMPLES[p.name](cls) for p in params if p.kind is not p.KEYWORD_ONLY]
    kwargs = {p.name: SAMPLES[p.name](cls) for p in params if p.kind is p.KEYWORD_ONLY}
    return cls(*args, **kwargs)


# ----- (a) every class, through a real server -------------------------------------------------------------

@pytest.fixture(scope="module", params=DATABASES)
def error_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real app on a real Registry (SQLite, or PostgreSQL when configured), served by uvicorn in a
    thread, with one test-only route raising a sample of the class whose code is in the path."""
    root = tmp_path_factory.mktemp(f"errors-{request.param}")
    url = f"sqlite:///{root / 'registry.db'}" if request.param == "sqlite" else create_postgres_database()
    reg = Registry(home=root / "home", database_url=url)
    assert reg.db.engine is not None  # the schema is ready before the first request
    app = create_app(reg)

    @app.get("/test-only/raise/{code}")
    def raise_one(code: str) -> None:
        raise sample(tree()[code])

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        reg.close()
        if request.param != "sqlite":
            drop_postgres_database(url)


@pytest.mark.parametrize("cls", every_class(), ids=lambda cls: cls.__name__)
def test_every_error_comes_back_from_a_server_as_the_same_class_and_message(error_server: str,
                                                                            cls: Any) -> None:
    raised: Any = sample(cls)
    http = Http(error_server, None, DEFAULT_TIMEOUT, retries=0, backoff=0)
    try:
        with pytest.raises(Exception) as caught:
            http.send("GET", f"/test-only/raise/{cls.code}")
    finally:
        http.close()
    got: Any = caught.value
    assert type(got) is cls
    assert str(got) == str(raised)
    assert to_payload(got) == to_payload(raised)  # status, code, message and every extra field
    for name in fields_of(cls):
        original = getattr(raised, name)
        expected = [str(v) for v in original] if isinstance(original, list) else original
        assert getattr(got, name) == expected, name
    if isinstance(got, RemoteError):
        assert (got.status, got.code) == (status_of(raised), raised.code)


def test_a_protocol_refusal_sends_its_headers(error_server: str) -> None:
    response = httpx.get(f"{error_server}/test-only/raise/{UnauthorizedError.code}")
    assert response.status_code == 401
    assert response.headers["X-Swiftreg-Test"] == "UnauthorizedError"
    assert response.json()["error"]["code"] == "unauthorized"


# ----- (b) real operations: remote raises what local raises --------------------------------------------

@pytest.fixture
def pair(server: Server, tmp_path: Path) -> Iterator[tuple[Registry, RemoteRegistry]]:
    """A local Registry on the same kind of database as the real `swiftreg serve`, and a client of that server."""
    postgres = not server.database_url.startswith("sqlite")
    url = create_postgres_database() if postgres else f"sqlite:///{tmp_path / 'local.db'}"
    local = Registry(home=tmp_path / "local", database_url=url)
    remote = RemoteRegistry(server.url, server.write_token, home=tmp_path / "client", retries=0)
    try:
        yield local, remote
    finally:
        local.close()
        if postgres:
            drop_postgres_database(url)


def _refusal(call: Callable[[], object]) -> Any:
    with pytest.raises((RegistryError, FormatError)) as caught:
        call()
    return caught.value


def test_real_refusals_are_the_same_locally_and_through_a_server(pair: tuple[Registry, RemoteRegistry],
                                                                 tmp_path: Path) -> None:
    local, remote = pair
    ns = f"errors{time.monotonic_ns()}"  # the module's server is shared: a namespace of this test's own
    first, second = write_peft_lora(tmp_path / "one", seed=1), write_peft_lora(tmp_path / "two", seed=2)
    bad_config = write_peft_lora(tmp_path / "bad-config", seed=3)
    (bad_config / "adapter_config.json").write_text("{not json")
    invalid = write_peft_lora(tmp_path / "invalid", seed=4)
    config = json.loads((invalid / "adapter_config.json").read_text())
    (invalid / "adapter_config.json").write_text(json.dumps({**config, "r": "x"}))
    for reg in (local, remote):
        reg.push(first, f"{ns}/a", tag="v1")
        reg.push(second, f"{ns}/a")
    calls: list[tuple[Any, Callable[[Any], object]]] = [
        (NotFoundError, lambda reg: reg.show(f"{ns}/absent")),
        (NotFoundError, lambda reg: reg.show(f"{ns}/a@v9")),
        (RefExistsError, lambda reg: reg.tag(f"{ns}/a@2", "v1")),
        (registry.errors.InvalidCheckpointError, lambda reg: reg.push(invalid, f"{ns}/b")),
        (converters.ConfigError, lambda reg: reg.push(bad_config, f"{ns}/b")),
    ]
    for expected, call in calls:
        here = _refusal(lambda call=call: call(local))  # type: ignore[misc]
        there = _refusal(lambda call=call: call(remote))  # type: ignore[misc]
        assert type(here) is expected and type(there) is expected, (here, there)
        assert str(there) == str(here)
        assert to_payload(there) == to_payload(here)


def test_a_format_refusal_made_on_the_server_arrives_as_that_format_error(pair: tuple[Registry, RemoteRegistry],
                                                                          tmp_path: Path) -> None:
    """A Swift LoRA PEFT cannot express, asked for as PEFT: the server's converter refuses, and the client
    raises the converter's class (not InvalidCheckpointError), with the server's paths taken out."""
    local, remote = pair
    ns = f"errors{time.monotonic_ns()}"
    swift = write_swift_lora(tmp_path / "qa")
    config = json.loads((swift / "default" / "adapter_config.json").read_text())
    (swift / "default" / "adapter_config.json").write_text(json.dumps({**config, "use_qa_lora": True}))
    for reg in (local, remote):
        reg.push(swift, f"{ns}/qa")
    here = _refusal(lambda: local.resolve(f"{ns}/qa", format="peft"))
    there = _refusal(lambda: remote.resolve(f"{ns}/qa", format="peft"))
    assert type(here) is type(there) is converters.UnsupportedFieldError
    why = str(here).split("adapter_config.json: ", 1)[1]
    assert str(there).endswith("adapter_config.json: " + why)
    assert str(tmp_path) not in str(there) and "/home/" not in str(there)


# ----- (c) the tree itself -------------------------------------------------------------------------------

def test_every_class_has_its_own_unique_code_and_an_error_status() -> None:
    classes = every_class()
    codes = [cls.code for cls in classes]  # type: ignore[attr-defined]
    assert len(codes) == len(set(codes)), sorted(c for c in codes if codes.count(c) > 1)
    for cls in classes:
        assert "code" in vars(cls), f"{cls.__name__} inherits its code"
        assert re.fullmatch(r"[a-z][a-z0-9_]*", cls.code), cls  # type: ignore[attr-defined]
        assert 400 <= status_of(cls) <= 599, cls  # type: ignore[arg-type]
    assert {cls.code: cls for cls in classes} == tree()  # type: ignore[attr-defined]


def _drawn(module: Any) -> dict[str, tuple[int | None, str]]:
    """name -> (status, code) for each line of a module docstring's drawn tree."""
    out: dict[str, tuple[int | None, str]] = {}
    for line in (module.__doc__ or "").splitlines():
        found = re.match(r"^\s+[│├└─ ]*(\w+)\s+(?:(\d{3})\s+)?([a-z][a-z0-9_]*)\s", line)
        if found and found.group(1)[0].isupper():
            out[found.group(1)] = (int(found.group(2)) if found.group(2) else None, found.group(3))
    return out


def test_the_drawn_trees_list_every_class_with_its_status_and_code() -> None:
    registry_classes = [c for c in every_class() if issubclass(c, RegistryError)]
    format_classes = [c for c in every_class() if issubclass(c, FormatError)]
    drawn = _drawn(registry.errors)
    assert {name for name in drawn} == {c.__name__ for c in registry_classes}
    for cls in registry_classes:
        assert drawn[cls.__name__] == (cls.status, cls.code), cls
    for module in (registry.store.errors, registry.tensors.errors):
        for name, (status, code) in _drawn(module).items():
            if name != "RegistryError":
                assert drawn[name] == (status, code), name
    drawn_formats = _drawn(converters.errors)
    assert {name for name in drawn_formats} == {c.__name__ for c in format_classes}
    for format_class in format_classes:
        assert drawn_formats[format_class.__name__] == (None, format_class.code), format_class


def test_unknown_codes_fall_back_by_status_and_foreign_exceptions_are_refused() -> None:
    body = {"error": {"code": "from_a_newer_server", "message": "m"}}
    assert type(from_payload(404, body)) is NotFoundError
    denied = from_payload(403, body)
    assert type(denied) is AccessDeniedError and (denied.status, denied.code) == (403, "from_a_newer_server")
    other = from_payload(418, body)
    assert type(other) is RemoteError and (other.status, other.code) == (418, "from_a_newer_server")
    assert str(other) == "m (HTTP 418, from_a_newer_server)"
    assert str(from_payload(502, None, fallback="GET x: HTTP 502 Bad Gateway")).startswith("GET x: HTTP 502")
    with pytest.raises(TypeError):
        to_payload(ValueError("not ours"))  # type: ignore[arg-type]


def test_a_class_without_its_own_code_is_refused_when_it_is_defined() -> None:
    with pytest.raises(TypeError, match="must define its own wire `code`"):
        type("Codeless", (RegistryError,), {})
