"""Can vLLM serve this adapter? The checks vLLM makes at load time, made before vLLM sees the files.

vLLM 0.32 (`vllm/lora/peft_helper.py`, `PEFTHelper.validate_legal`) refuses an adapter at load time
for each of the limits below, and only after a request has already named it. These checks read the
PEFT folder's `adapter_config.json` and safetensors header (through `converters`, no tensor decoded,
no torch, no vLLM import), so `swiftreg validate --target vllm`, `swiftreg push --check vllm` and the
resolver plugin (registry/integrations/vllm.py) refuse the same adapters with the field at fault and
what to do instead. One function per limit; `check_vllm` runs them all.

    limit               config field(s)                       vLLM's own message
    tuner               peft_type                             (only LoRA is served)
    dora                use_dora                              "vLLM does not yet support DoRA."
    lora_bias           lora_bias                             "vLLM does not support LoRA bias"
    bias                bias != "none"                        "Adapter bias is not supported."
    rank                r, rank_pattern values, lora_A rows   "LoRA rank N is greater than max_lora_rank M."
    modules_to_save     entries other than classifier/score   "vLLM only supports modules_to_save being ..."
    init                init_lora_weights PiSSA/OLoRA/CorDA/LoftQ  "vLLM does not support init_lora_weights=..."
    alora               alora_invocation_tokens               "vLLM does not support Activated LoRA (aLoRA)."
    layer_replication   layer_replication                     "vLLM does not support layer_replication."
    bdlora              use_bdlora                            "vLLM does not support block-diagonal LoRA"
    qalora              use_qalora (and ms-swift's use_qa_lora)   "vLLM does not support QALoRA."
    base_model          the revision's recorded base vs the served model (by registry id or fingerprint)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from converters.config import SIDECAR_NAME, read_json
from converters.errors import FormatError
from converters.layout import Adapter, detect
from converters.methods import GRAMMAR
from converters.tensors import WeightsFile

if TYPE_CHECKING:
    from .api import RegistryAPI, RevisionInfo

TARGET = "vllm"
#: vLLM's default `--max-lora-rank` (vllm/config/lora.py).
DEFAULT_MAX_LORA_RANK = 16
#: The only modules_to_save vLLM accepts (classification heads).
SERVABLE_MODULES_TO_SAVE = ("classifier", "score")
#: init_lora_weights strings that only set initial adapter weights (a saved adapter is a plain LoRA);
#: every other string (pissa, pissa_niter_N, olora, corda, loftq) changed the base weights as well.
SERVABLE_INITS = ("gaussian", "eva", "orthogonal", "mica", "lora_ga")
MERGE_ADVICE = ("merge it into its base with the worker (`swiftreg merge ID --base-model BASE --push NS/MERGED`) and "
                "serve the merged model")


@dataclass(frozen=True)
class Reason:
    """One thing vLLM would refuse: which limit, the field or file at fault, and what to do instead."""

    limit: str
    where: str
    message: str
    advice: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}; {self.advice}"


@dataclass(frozen=True)
class BaseRequirement:
    """The base model a revision records (`push --base-model`): its registry id and shape fingerprint."""

    repo_id: str                 # "meta/llama@1"
    fingerprint: str | None = None


@dataclass(frozen=True)
class ServedBase:
    """What vLLM serves, as far as it can be known: a registry id it resolves to and/or a fingerprint."""

    name: str                    # vLLM's --model as given
    repo_id: str | None = None   # "meta/llama@1" when the name is a registry id of a base model
    fingerprint: str | None = None


@dataclass(frozen=True)
class Verdict:
    """Whether vLLM can serve the adapter at `path`, and every reason it cannot."""

    path: str
    max_lora_rank: int
    reasons: tuple[Reason, ...] = ()
    notes: tuple[str, ...] = ()
    target: str = TARGET

    @property
    def ok(self) -> bool:
        return not self.reasons

    def summary(self) -> str:
        """One line for a log or an HTTP error: every reason, with what to do."""
        if self.ok:
            return f"{self.path}: servable by vLLM (max_lora_rank {self.max_lora_rank})"
        return "vLLM cannot serve this adapter: " + " | ".join(str(r) for r in self.reasons)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        d["reasons"] = [asdict(r) for r in self.reasons]
        d["notes"] = list(self.notes)
        return d


Config = Mapping[str, Any]
WHERE = "adapter_config.json"


def check_tuner(config: Config) -> list[Reason]:
    """vLLM serves LoRA only: every other type is refused, naming it, with what to do instead."""
    from converters.methods import tuners

    peft_type = config.get("peft_type")
    if peft_type == "LORA":
        return []
    name = peft_type if isinstance(peft_type, str) else config.get("swift_type")
    refusal = tuners.merge_refusal(str(name)) if isinstance(name, str) and name in tuners.BY_NAME else "unknown"
    advice = MERGE_ADVICE if refusal is None else (
        f"{name} cannot be merged either ({refusal.split(': ', 1)[-1]}); serve it with peft and transformers "
        "(PeftModel.from_pretrained), not vLLM")
    return [Reason("tuner", f"{WHERE}: peft_type", f"is {name!r}; vLLM serves LoRA adapters only", advice)]


def check_dora(config: Config) -> list[Reason]:
    if not config.get("use_dora"):
        return []
    return [Reason("dora", f"{WHERE}: use_dora", "DoRA is not supported by vLLM", MERGE_ADVICE)]


def check_lora_bias(config: Config) -> list[Reason]:
    if not config.get("lora_bias"):
        return []
    return [Reason("lora_bias", f"{WHERE}: lora_bias", "lora_B biases are not supported by vLLM", MERGE_ADVICE)]


def check_bias(config: Config) -> list[Reason]:
    bias = config.get("bias", "none")
    if bias in (None, "none"):
        return []
    return [Reason("bias", f"{WHERE}: bias", f"is {bias!r}; vLLM serves only bias='none' (trained base biases "
                   "are not applied)", MERGE_ADVICE)]


def reduce_command(subject: str, rank: int, *, registry: bool) -> str:
    """The command that brings an adapter down to `rank` (a one-source SVD: the best rank-`rank` approximation
    of its delta, with its equivalence figures), ready to run: a registry id is pushed beside it as
    `NS/NAME-rRANK`, a folder written beside it as `FOLDER-rRANK`."""
    output = (f"--push {subject.partition('@')[0]}-r{rank}" if registry
              else f"-o {subject.rstrip('/') or '.'}-r{rank}")
    return f"swiftreg combine {subject} --weights 1 --method svd --rank {rank} {output}"


def check_rank(config: Config, max_lora_rank: int, lora_a_rows: Mapping[str, int] | None = None,
               reduce: str | None = None) -> list[Reason]:
    """r, every rank_pattern value, and the actual lora_A rows in the weights, against --max-lora-rank.
    `reduce`: the command that reduces this adapter's rank (reduce_command), named in the advice."""
    ranks: dict[str, int] = {}
    r = config.get("r")
    if isinstance(r, int) and not isinstance(r, bool):
        ranks["r"] = r
    pattern = config.get("rank_pattern") or {}
    if isinstance(pattern, Mapping):
        for key, value in pattern.items():
            if isinstance(value, int) and not isinstance(value, bool):
                ranks[f"rank_pattern[{key!r}]"] = value
    for module, rows in (lora_a_rows or {}).items():
        ranks.setdefault(f"lora_A of {module}", rows)
    over = {k: v for k, v in ranks.items() if v > max_lora_rank}
    if not over:
        return []
    worst = max(over.values())
    fields = ", ".join(f"{k}={v}" for k, v in list(over.items())[:4]) + (" ..." if len(over) > 4 else "")
    return [Reason("rank", f"{WHERE}: {fields}", f"rank {worst} is above vLLM's --max-lora-rank {max_lora_rank}",
                   f"start vLLM with --max-lora-rank {_next_rank(worst)} (it accepts 1, 8, 16, 32, 64, 128, 256, "
                   "320, 512), or reduce the adapter's rank to a servable one (`"
                   + (reduce or reduce_command("ID", max_lora_rank, registry=True).replace("ID-r", "NS/NAME-r"))
                   + "`)")]


def _next_rank(rank: int) -> int:
    return next((r for r in (8, 16, 32, 64, 128, 256, 320, 512) if r >= rank), rank)


def check_modules_to_save(config: Config) -> list[Reason]:
    modules = config.get("modules_to_save") or []
    if not isinstance(modules, list):
        modules = [modules]
    unsupported = [m for m in modules if m not in SERVABLE_MODULES_TO_SAVE]
    if not unsupported:
        return []
    return [Reason("modules_to_save", f"{WHERE}: modules_to_save",
                   f"{unsupported} are full trained copies of base modules; vLLM only accepts "
                   f"{list(SERVABLE_MODULES_TO_SAVE)} (classification heads)", MERGE_ADVICE)]


def check_init(config: Config) -> list[Reason]:
    init = config.get("init_lora_weights", True)
    if not isinstance(init, str) or init.lower() in SERVABLE_INITS:
        return []
    return [Reason("init", f"{WHERE}: init_lora_weights",
                   f"is {init!r}: PiSSA, OLoRA, CorDA and LoftQ also change the base weights, which vLLM does not",
                   "save it as a plain LoRA with PEFT's path_initial_model_for_weight_conversion, or merge it into "
                   "its base and serve the merged model")]


def check_alora(config: Config) -> list[Reason]:
    if not config.get("alora_invocation_tokens"):
        return []
    return [Reason("alora", f"{WHERE}: alora_invocation_tokens", "Activated LoRA (aLoRA) is not supported by vLLM",
                   "serve it with PEFT, or retrain as a plain LoRA")]


def check_layer_replication(config: Config) -> list[Reason]:
    if not config.get("layer_replication"):
        return []
    return [Reason("layer_replication", f"{WHERE}: layer_replication",
                   "replicated layers change the model's structure, which vLLM does not", MERGE_ADVICE)]


def check_bdlora(config: Config) -> list[Reason]:
    if not config.get("use_bdlora"):
        return []
    return [Reason("bdlora", f"{WHERE}: use_bdlora", "block-diagonal LoRA (BD-LoRA) is not supported by vLLM",
                   MERGE_ADVICE)]


def check_qalora(config: Config, sidecar: Config | None = None) -> list[Reason]:
    swift_qa = bool((sidecar or {}).get("use_qa_lora") or config.get("use_qa_lora"))
    if not config.get("use_qalora") and not swift_qa:
        return []
    field_name = "use_qalora" if config.get("use_qalora") else "use_qa_lora (ms-swift)"
    return [Reason("qalora", f"{WHERE}: {field_name}", "QA-LoRA pools inputs group-wise; vLLM does not",
                   "serve it with the library that trained it")]


def check_base_model(required: BaseRequirement | None, served: ServedBase | None) -> tuple[list[Reason], list[str]]:
    """The served model must be the revision's recorded base: same registry revision, or same fingerprint.

    Returns (reasons, notes): a served model that is neither a registry id nor a readable folder
    cannot be compared, which is a note, not a refusal.
    """
    if required is None or served is None:
        return [], []
    if served.repo_id is not None:
        if served.repo_id == required.repo_id:
            return [], []
        if served.fingerprint is None:
            return [_base_reason(required, served, f"is {served.repo_id}")], []
    if served.fingerprint is not None and required.fingerprint is not None:
        if served.fingerprint == required.fingerprint:
            return [], []
        return [_base_reason(required, served, "has other tensor names, dtypes or shapes "
                             f"(fingerprint {served.fingerprint[:19]}, recorded {required.fingerprint[:19]})")], []
    return [], [f"the served model {served.name!r} could not be compared with the recorded base {required.repo_id} "
                "(serve a registry base model or a local folder to have it checked)"]


def _base_reason(required: BaseRequirement, served: ServedBase, what: str) -> Reason:
    return Reason("base_model", f"served model {served.name}",
                  f"{what}, but this adapter was trained on {required.repo_id}",
                  f"serve it on {required.repo_id} (`swiftreg pull {required.repo_id}` gives its folder)")


#: The config-only checks, in the order their reasons are reported.
CONFIG_CHECKS: tuple[Callable[[Config], list[Reason]], ...] = (
    check_tuner, check_dora, check_lora_bias, check_bias, check_modules_to_save, check_init, check_alora,
    check_layer_replication, check_bdlora)


def lora_a_rows(adapter: Adapter) -> dict[str, int]:
    """module -> rank actually stored (rows of lora_A), from the safetensors header only."""
    if adapter.weights is None:
        return {}
    rows: dict[str, int] = {}
    for info in WeightsFile.open(adapter.weights).infos():
        parsed = GRAMMAR.parse_peft(info.name)
        if parsed is None or parsed.role is None or parsed.role.name not in ("lora_A", "lora_embedding_A"):
            continue
        if parsed.param not in (None, "weight") or not info.shape:
            continue
        rows[parsed.module] = info.shape[0]
    return rows


def check_vllm(path: str | Path, *, max_lora_rank: int = DEFAULT_MAX_LORA_RANK,
               base: BaseRequirement | None = None, served: ServedBase | None = None,
               registry_id: str | None = None) -> Verdict:
    """Every vLLM limit on the PEFT folder at `path` (the adapter at its root: the one vLLM loads).
    `registry_id`: the revision the folder is a snapshot of, for advice the user can run as given."""
    checkpoint = detect(path)
    root = Path(checkpoint.path)
    if checkpoint.format != "peft":
        return Verdict(str(root), max_lora_rank, (Reason(
            "format", str(root), "is a Swift checkpoint; vLLM loads PEFT folders",
            "convert it (`swiftreg convert SRC DST --to peft`), or serve it from the registry, which hands vLLM the "
            "PEFT form"),))
    adapter = next((a for a in checkpoint.adapters if Path(a.folder) == root), None)
    if adapter is None:
        return Verdict(str(root), max_lora_rank, (Reason(
            "layout", str(root), "has no adapter at its root (adapter_config.json); vLLM loads only that one",
            "serve one of its subfolders' adapters on its own"),))
    config = adapter.config
    if config.get("peft_type") != "LORA":  # nothing else of vLLM's applies to a type it does not serve
        return Verdict(str(root), max_lora_rank, tuple(check_tuner(config)))
    reasons: list[Reason] = []
    for check in CONFIG_CHECKS:
        reasons += check(config)
    try:
        rows = lora_a_rows(adapter)
    except FormatError as exc:
        reasons.append(Reason("layout", adapter.weights.name if adapter.weights else WHERE, str(exc),
                              "push the adapter again from its source"))
        rows = {}
    reasons += check_rank(config, max_lora_rank, rows, reduce_command(
        registry_id or str(path), max_lora_rank, registry=registry_id is not None))
    reasons += check_qalora(config, _sidecar(root))
    base_reasons, notes = check_base_model(base, served)
    reasons += base_reasons
    others = [a.name for a in checkpoint.adapters if a is not adapter]
    if others:
        notes.append(f"vLLM loads only the root adapter; {', '.join(others)} in subfolders are not served")
    return Verdict(str(root), max_lora_rank, tuple(reasons), tuple(notes))


def _sidecar(root: Path) -> dict[str, Any]:
    path = root / SIDECAR_NAME
    if not path.is_file():
        return {}
    try:
        value = read_json(path)
    except FormatError:
        return {}
    return value if isinstance(value, dict) else {}


def base_fingerprint(folder: str | Path) -> str | None:
    """The registry's shape fingerprint of a transformers model folder (as `base push` records it)."""
    from .errors import RegistryError
    from .rules import base_meta

    try:
        return base_meta(Path(folder))[0].get("fingerprint")
    except (RegistryError, FormatError, OSError):
        return None


# ----- with a registry: the same checks on a revision (CLI, push --check, the vLLM plugin) -----------

CHECK_KIND = "serve:vllm"
#: The vLLM release whose load-time limits these checks reproduce (recorded with each verdict as vllm_limits).
VLLM_LIMITS_OF = "0.32.0"


def served_base(reg: RegistryAPI, name: str | None) -> ServedBase | None:
    """What vLLM serves (its --model): a local folder, fingerprinted, and/or a registry base model id."""
    if not name:
        return None
    from .errors import InvalidIdError, RegistryError
    from .ids import parse_id

    info = None
    try:
        parse_id(name)
        info = reg.show(name)
    except (InvalidIdError, RegistryError):
        pass
    if info is not None and info.kind == "base":  # a registered base: its recorded fingerprint, no disk read
        fingerprint = info.meta.get("fingerprint")
        if fingerprint is None and Path(name).is_dir():
            fingerprint = base_fingerprint(name)
        return ServedBase(name, f"{info.repo}@{info.number}", fingerprint)
    return ServedBase(name, None, base_fingerprint(name) if Path(name).is_dir() else None)


def base_requirement(reg: RegistryAPI, info: RevisionInfo) -> BaseRequirement | None:
    """The base a revision records (`push --base-model`), with its fingerprint; None when it records none."""
    if not info.base_model:
        return None
    return BaseRequirement(info.base_model, reg.show(info.base_model).meta.get("fingerprint"))


def check_revision(reg: RegistryAPI, repo_id: str, *, max_lora_rank: int = DEFAULT_MAX_LORA_RANK,
                   served: ServedBase | None = None) -> tuple[RevisionInfo, Path, Verdict]:
    """(revision info, PEFT snapshot, verdict) for a registry id, resolved as vLLM would get it."""
    info = reg.show(repo_id)
    folder = Path(reg.resolve(f"{info.repo}@{info.number}", "peft"))
    required = base_requirement(reg, info)
    return info, folder, check_vllm(folder, max_lora_rank=max_lora_rank, base=required,
                                    served=served if required else None, registry_id=f"{info.repo}@{info.number}")


