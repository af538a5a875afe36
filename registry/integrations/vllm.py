"""vLLM LoRAResolver plugin: `"model": "team/sql-lora@v3"` is served from the registry, in PEFT form.

Installed through the `vllm.general_plugins` entry point (pyproject.toml); vLLM loads it in every
process when `VLLM_PLUGINS` is unset (or names `swiftreg`), and asks the resolver about any model
name that is not loaded yet when `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True` and `--enable-lora`:

    VLLM_ALLOW_RUNTIME_LORA_UPDATING=True SWIFTREG_HOME=... (or SWIFTREG_URL=... SWIFTREG_TOKEN=...) \
    python -m vllm.entrypoints.openai.api_server --model BASE --enable-lora --max-lora-rank 16

What a resolution does (`Resolver.resolve`, vLLM-free so it is tested and timed without vLLM):
1. The name goes through the registry's one ID parser; a name that is not `namespace/name[@ref]` is
   left to vLLM's other resolvers (None).
2. The registry the environment names (`registry.default_registry()`: SWIFTREG_HOME embedded, or
   SWIFTREG_URL/SWIFTREG_TOKEN remote) resolves the ref to a revision number, then that immutable
   revision to a verified local snapshot in PEFT form (Swift revisions converted once, server-side or
   locally). A number or digest already resolved (in this process, or before a restart: a record under
   SWIFTREG_HOME) costs no database query and no network call.
3. `registry.vllm_checks.check_vllm` checks the snapshot against every limit vLLM enforces at load time,
   with vLLM's own `--max-lora-rank`, and against the base the revision records (`push --base-model`):
   vLLM's served model must be that base, by registry id or by shape fingerprint.
4. vLLM gets `LoRARequest(lora_name=<the requested name>, lora_path=<snapshot>)`.

Refusals and the HTTP answer. vLLM's interface lets a resolver return a request or None, and
`OpenAIServingModels.resolve_lora` (vLLM 0.32) turns the outcomes into:
- None from every resolver: 404 "LoRA adapter X does not exist": no reason reaches anyone;
- a request whose load fails: 400 "LoRA adapter 'X' was found but could not be loaded", the reason
  only in vLLM's log, and the adapter has been handed to the engine;
- an exception from the resolver: not caught there, so it reaches the API server's exception
  handlers, which map vLLM's own error classes to their status with the exception's message.
So this plugin raises: a refused adapter -> `VLLMValidationError` (400 BadRequestError, param
"model", the message lists every reason and what to do instead, e.g. merge a DoRA into its base);
an unknown ref of a registry id (`team/x@nope`) -> `VLLMNotFoundError` (404 with the registry's own
message); a registry that refuses the token -> 403, one that cannot be reached or fails (its database,
its disk, a corrupt blob) -> 503 with the traceback in vLLM's log, never a 500 from the plugin. The reason is
also logged as a warning on vLLM's logger (`vllm.swiftreg`). A refused adapter never reaches the
engine. An id without `@ref` that the registry does not hold returns None, so an HF-style name
`org/repo` still reaches vLLM's other resolvers.

Moving tags and vLLM's cache of loaded adapters. vLLM keys loaded adapters by the requested name
and asks resolvers only about names it has not loaded, so once `team/x@prod` is loaded it keeps
serving that revision until it is unloaded (`POST /v1/unload_lora_adapter {"lora_name":
"team/x@prod"}`, allowed by VLLM_ALLOW_RUNTIME_LORA_UPDATING). The next request for `team/x@prod`
then asks this resolver again, which asks the registry where `prod` points now: the new revision is
loaded from its own snapshot folder under a new adapter id (vLLM numbers each resolution), so no
engine cache or prefix-cache block computed with the old weights is reused. Requests that name the
old revision by number or digest (`team/x@3`, `team/x@sha256:...`) are separate adapters and keep
being served. To pin a deployment, serve immutable refs; to follow a tag, unload it when it moves.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import sys
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .. import atomic
from ..errors import IntegrityError, InvalidIdError, NotFoundError, RegistryError, ServingRefusedError
from ..ids import parse_id
from ..params import DIGITS
from ..vllm_checks import DEFAULT_MAX_LORA_RANK, ServedBase, Verdict, base_requirement, check_vllm, served_base

if TYPE_CHECKING:
    from ..api import RegistryAPI, RevisionInfo
    from ..ids import RepoId

RESOLVER_NAME = "swiftreg"
LOGGER_NAME = "vllm.swiftreg"  # a child of vLLM's own logger: its handlers print it with vLLM's log
_RANK_ARG = re.compile(r"^--max[-_]lora[-_]rank(?:=(\d+))?$")
_SNAPSHOT_NUMBER = re.compile(r"^r(\d+)-")  # registry/snapshots.py: r<number>-<format>-<digest prefix>


@dataclass(frozen=True)
class Resolution:
    """A servable revision: the requested name, the immutable revision it names, and its PEFT folder."""

    name: str
    revision: str        # "team/x@3"
    digest: str
    folder: Path
    verdict: Verdict
    seconds: float


def max_lora_rank_from_argv(argv: list[str] | None = None) -> int:
    """vLLM's --max-lora-rank, read from the server's own command line (vLLM does not hand it to resolvers)."""
    args = sys.argv if argv is None else argv
    for i, arg in enumerate(args):
        match = _RANK_ARG.match(arg)
        if match:
            value = match.group(1) or (args[i + 1] if i + 1 < len(args) else "")
            if DIGITS.fullmatch(value):
                return int(value)
    return DEFAULT_MAX_LORA_RANK


class Resolver:
    """Registry id -> checked PEFT snapshot, with no vLLM import (the plugin wraps it for vLLM).

    `registry` is a callable giving the registry to use (default: the one the environment names, read
    at each call so SWIFTREG_* set after the plugin loaded still count).
    """

    def __init__(self, registry: Callable[[], RegistryAPI] | None = None, max_lora_rank: int | None = None) -> None:
        if registry is None:
            from .. import default_registry

            registry = default_registry
        self._registry = registry
        self._max_lora_rank = max_lora_rank
        self._lock = threading.Lock()
        # immutable name ("team/x@3", "team/x@sha256:...") -> its Resolution; (folder, served) -> verdict
        self._resolved: dict[tuple[str, str], Resolution] = {}
        self._verdicts: dict[tuple[str, str], Verdict] = {}
        self._served: dict[str, ServedBase | None] = {}
        self._adapters: set[str] = set()                        # "ns/name" known to be adapters
        self._revisions: dict[str, tuple[str, RevisionInfo]] = {}        # snapshot folder -> ("ns/name@N", info)

    @property
    def max_lora_rank(self) -> int:
        if self._max_lora_rank is None:
            self._max_lora_rank = max_lora_rank_from_argv()
        return self._max_lora_rank

    def resolve(self, base_model_name: str, lora_name: str) -> Resolution | None:
        """The checked snapshot for `lora_name`; None when the name is not the registry's to answer.

        Raises NotFoundError for an explicit ref the registry lacks, ServingRefusedError when vLLM
        could not serve the revision, and the registry's own errors otherwise.
        """
        started = time.perf_counter()
        try:
            rid = parse_id(lora_name)
        except InvalidIdError:
            return None
        immutable = rid.ref.kind in ("number", "digest")
        if immutable:
            hit = self._resolved.get((lora_name, base_model_name))
            if hit is not None and hit.folder.is_dir():
                return Resolution(lora_name, hit.revision, hit.digest, hit.folder, hit.verdict,
                                  time.perf_counter() - started)
        reg = self._registry()
        if immutable:
            remembered = self._remembered(reg, lora_name, base_model_name)
            if remembered is not None:
                self._resolved[(lora_name, base_model_name)] = remembered
                return Resolution(lora_name, remembered.revision, remembered.digest, remembered.folder,
                                  remembered.verdict, time.perf_counter() - started)
        try:
            folder, revision, info = self._locate(reg, rid, lora_name)
        except NotFoundError:
            if not rid.explicit_ref:
                return None  # maybe an HF-style "org/repo" for another resolver
            raise
        verdict = self._verdict(reg, folder, info, base_model_name)
        if not verdict.ok:
            raise ServingRefusedError(f"{lora_name} ({revision}, {info.digest[:19]}): {verdict.summary()}", verdict)
        resolution = Resolution(lora_name, revision, info.digest, folder, verdict, time.perf_counter() - started)
        if immutable:
            with self._lock:
                if len(self._resolved) > 4096:
                    self._resolved.clear()
                self._resolved[(lora_name, base_model_name)] = resolution
            self._remember(reg, resolution, base_model_name)
        return resolution

    def _locate(self, reg: RegistryAPI, rid: RepoId, name: str) -> tuple[Path, str, RevisionInfo]:
        """(PEFT snapshot, "ns/name@N", revision info) for an id.

        A repository seen before as an adapter goes straight to the registry's resolve (for a tag: a
        memo and two stats on SQLite, one request to a server); revision info is fetched only for a
        snapshot folder not met before. A repository never seen is looked up first, so a base model id
        is refused before anything is materialised.
        """
        if rid.repo in self._adapters:
            folder = Path(reg.resolve(name, "peft"))
            known = self._revisions.get(str(folder))
            if known is not None:
                return folder, known[0], known[1]
            match = _SNAPSHOT_NUMBER.match(folder.name)
            info = reg.show(f"{rid.repo}@{match.group(1)}" if match else name)
        else:
            info = reg.show(name)
            if info.kind != "adapter":
                raise ServingRefusedError(f"{name} is a base model, not an adapter", Verdict(name, 0))
            folder = Path(reg.resolve(f"{info.repo}@{info.number}", "peft"))
        revision = f"{info.repo}@{info.number}"
        with self._lock:
            self._adapters.add(rid.repo)
            if len(self._revisions) > 4096:
                self._revisions.clear()
            self._revisions[str(folder)] = (revision, info)
        return folder, revision, info

    # An immutable id (number, digest) that passed the checks is remembered on disk beside the registry's
    # snapshots, so a restarted vLLM resolves it again with no database query and no network call. The
    # snapshot folder it names exists only complete and verified; the record is keyed by the registry,
    # the id, vLLM's served model and its --max-lora-rank, which is everything the verdict depends on.

    def _memo_file(self, reg: RegistryAPI, name: str, base_model_name: str) -> Path | None:
        home = getattr(reg, "cache", None) or getattr(reg, "home", None)
        if home is None:
            return None
        where = getattr(reg, "url", None) or getattr(reg, "database_url", "")
        key = json.dumps([str(where), name, base_model_name, self.max_lora_rank])
        return Path(home) / "vllm-resolved" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"

    def _remembered(self, reg: RegistryAPI, name: str, base_model_name: str) -> Resolution | None:
        path = self._memo_file(reg, name, base_model_name)
        try:
            record = json.loads(path.read_text()) if path is not None else None
            if not record or record.get("name") != name:
                return None
            folder = Path(record["folder"])
            if not folder.is_dir():
                return None
            verdict = Verdict(str(folder), int(record["max_lora_rank"]), (), tuple(record.get("notes") or ()))
            return Resolution(name, str(record["revision"]), str(record["digest"]), folder, verdict, 0.0)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _remember(self, reg: RegistryAPI, resolution: Resolution, base_model_name: str) -> None:
        path = self._memo_file(reg, resolution.name, base_model_name)
        if path is None or not resolution.verdict.ok:
            return
        record = {"name": resolution.name, "revision": resolution.revision, "digest": resolution.digest,
                  "folder": str(resolution.folder), "max_lora_rank": resolution.verdict.max_lora_rank,
                  "notes": list(resolution.verdict.notes)}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_file(path, json.dumps(record).encode())
        except OSError:
            pass  # only a shortcut for the next process: never fail a resolution over it

    def _verdict(self, reg: RegistryAPI, folder: Path, info: RevisionInfo, base_model_name: str) -> Verdict:
        key = (str(folder), base_model_name)
        verdict = self._verdicts.get(key)
        if verdict is None:
            required = base_requirement(reg, info)
            served = None
            if required is not None:
                served = self._served.get(base_model_name) or served_base(reg, base_model_name)
                self._served[base_model_name] = served
            verdict = check_vllm(folder, max_lora_rank=self.max_lora_rank, base=required, served=served,
                                 registry_id=f"{info.repo}@{info.number}")
            with self._lock:
                self._verdicts[key] = verdict
        return verdict


def _vllm_resolver_class() -> type:
    """The LoRAResolver subclass (built here: vLLM is imported only when vLLM loads the plugin)."""
    from vllm.exceptions import GracefulHTTPError, VLLMNotFoundError, VLLMValidationError
    from vllm.logger import init_logger
    from vllm.lora.request import LoRARequest
    from vllm.lora.resolver import LoRAResolver

    from ..errors import AccessDeniedError, ServerUnreachableError

    logger = init_logger(LOGGER_NAME)

    class SwiftregResolver(LoRAResolver):
        """Serves `namespace/name[@ref]` from swiftreg (see the module docstring for the answers)."""

        def __init__(self, core: Resolver | None = None) -> None:
            self.core = core or Resolver()

        async def resolve_lora(self, base_model_name: str, lora_name: str) -> LoRARequest | None:
            try:
                found = await asyncio.to_thread(self.core.resolve, base_model_name, lora_name)
            except ServingRefusedError as exc:
                logger.warning("swiftreg refused LoRA %r: %s", lora_name, exc)
                raise VLLMValidationError(f"swiftreg: {exc}", parameter="model", value=lora_name) from None
            except NotFoundError as exc:
                logger.warning("swiftreg has no LoRA %r: %s", lora_name, exc)
                raise VLLMNotFoundError(f"swiftreg: {exc}") from None
            except AccessDeniedError as exc:
                logger.warning("swiftreg registry refused access to %r: %s", lora_name, exc)
                raise GracefulHTTPError(f"swiftreg: {exc}", _status(403)) from None
            except ServerUnreachableError as exc:
                logger.warning("swiftreg registry unreachable for %r: %s", lora_name, exc)
                raise GracefulHTTPError(f"swiftreg: {exc}", _status(503)) from None
            except IntegrityError as exc:  # stored bytes no longer match their digest: nothing the client can fix
                logger.error("swiftreg could not serve %r: %s", lora_name, exc)
                raise GracefulHTTPError(f"swiftreg: {exc}", _status(503)) from None
            except RegistryError as exc:
                logger.warning("swiftreg could not serve %r: %s", lora_name, exc)
                raise VLLMValidationError(f"swiftreg: {exc}", parameter="model", value=lora_name) from None
            except Exception as exc:  # a FormatError from a conversion, or the registry's storage failing
                from converters import FormatError

                if isinstance(exc, FormatError):
                    logger.warning("swiftreg could not convert %r for vLLM: %s", lora_name, exc)
                    raise VLLMValidationError(f"swiftreg: {exc}", parameter="model", value=lora_name) from None
                logger.exception("swiftreg could not resolve LoRA %r", lora_name)
                raise GracefulHTTPError(f"swiftreg: the registry could not resolve {lora_name} "
                                        f"({type(exc).__name__}); see vLLM's log", _status(503)) from None
            if found is None:
                return None
            for note in found.verdict.notes:
                logger.warning("swiftreg: %s: %s", lora_name, note)
            logger.info("swiftreg resolved LoRA %r to %s (%s) at %s in %.1f ms", lora_name, found.revision,
                        found.digest[:19], found.folder, found.seconds * 1e3)
            # vLLM replaces lora_int_id with its own counter before loading.
            return LoRARequest(lora_name=lora_name, lora_int_id=1, lora_path=str(found.folder))

    return SwiftregResolver


def _status(code: int) -> HTTPStatus:
    return HTTPStatus(code)


def register() -> None:
    """The `vllm.general_plugins` entry point: register swiftreg's resolver (idempotent per process)."""
    from vllm.lora.resolver import LoRAResolverRegistry

    if RESOLVER_NAME in LoRAResolverRegistry.get_supported_resolvers():
        return
    LoRAResolverRegistry.register_resolver(RESOLVER_NAME, _vllm_resolver_class()())
    logging.getLogger(LOGGER_NAME).debug("swiftreg LoRA resolver registered")
