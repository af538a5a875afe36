"""Registry (embedded) and RemoteRegistry (HTTP) both implement registry.api.RegistryAPI, structurally.

The behaviour of the two is compared by tests/test_contract.py; this checks the shape: every method
of the protocol exists on both classes with a compatible signature (same parameters, kinds and
defaults; an implementation may add optional ones, never require more).
"""
from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from registry.api import RegistryAPI
from registry.client import RemoteRegistry
from registry.service import Registry

IMPLEMENTATIONS = [Registry, RemoteRegistry]


def _protocol_methods() -> list[str]:
    return sorted(name for name, value in vars(RegistryAPI).items()
                  if inspect.isfunction(value) and not name.startswith("_"))


def test_the_protocol_names_the_surface_consumers_use() -> None:
    assert {"push", "push_base", "pull", "resolve", "show", "log", "list", "tag", "untag", "remove_ref", "gc",
            "import_from", "check_serving", "submit_job", "job", "jobs", "cancel_job", "validation_history",
            "validate_all", "close"} <= set(_protocol_methods())


@pytest.mark.parametrize("cls", IMPLEMENTATIONS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", _protocol_methods())
def test_signature_is_compatible(cls: type, name: str) -> None:
    wanted = inspect.signature(getattr(RegistryAPI, name))
    method = getattr(cls, name, None)
    assert callable(method), f"{cls.__name__} has no method {name}"
    actual = inspect.signature(method)
    params = dict(actual.parameters)
    for pname, p in wanted.parameters.items():
        if p.kind is p.VAR_KEYWORD:
            assert any(q.kind is q.VAR_KEYWORD for q in params.values()), f"{cls.__name__}.{name} lacks **{pname}"
            continue
        assert pname in params, f"{cls.__name__}.{name} lacks parameter {pname!r}"
        q = params.pop(pname)
        assert q.kind == p.kind, f"{cls.__name__}.{name}({pname}) is {q.kind}, the protocol says {p.kind}"
        assert q.default == p.default, f"{cls.__name__}.{name}({pname}) defaults to {q.default!r}, not {p.default!r}"
    extra = [q for q in params.values() if q.kind not in (q.VAR_KEYWORD, q.VAR_POSITIONAL)
             and q.default is q.empty]
    assert not extra, f"{cls.__name__}.{name} requires parameters the protocol does not: {extra}"
    positional = [p for p in wanted.parameters if wanted.parameters[p].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    assert [p for p in actual.parameters if actual.parameters[p].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD][
        :len(positional)] == positional, f"{cls.__name__}.{name}: positional parameters in another order"


def test_instances_satisfy_the_runtime_protocol(tmp_path: Path) -> None:
    local = Registry(tmp_path / "local")
    remote = RemoteRegistry("http://127.0.0.1:9", home=tmp_path / "remote")
    try:
        assert isinstance(local, RegistryAPI)
        assert isinstance(remote, RegistryAPI)
    finally:
        local.close()
        remote.close()
