"""Commands on tensors, run through registry/ops.py: merge, unmerge, combine, check-equivalence.

Each prints the equivalence table of its check (or `--json`) and exits 1 when a tolerance was exceeded.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, cast

import click

from .common import F, base_model_option, doing, echo_json, json_option, open_registry, stages


#: What a Ctrl-C during merge, unmerge or combine leaves behind.
_INTERRUPTED = ("nothing was pushed or written: results are built in a scratch folder and pushed or copied only "
                "once checked")


class _OnFirstUse:
    """The registry, opened on first use: a merge of two local folders into `-o` never touches it, and opening
    it (SQLAlchemy, the database, its migrations' check) costs 0.2-0.7 s of a command users time against PEFT."""

    def __init__(self) -> None:
        self._registry: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._registry is None:
            self._registry = open_registry()
        return getattr(self._registry, name)


def _report(result: Any, as_json: bool) -> None:
    """Print the equivalence table (or JSON) and exit 1 when a tolerance was exceeded."""
    from ..tensors.equivalence import format_table

    if as_json:
        echo_json({"operation": result.operation, "passed": result.passed, "notes": result.notes,
                   "figures": result.figures, "comparisons": [c.to_dict() for c in result.comparisons],
                   "output": str(result.output) if result.output else None,
                   "pushed": result.pushed.to_dict() if result.pushed else None})
    else:
        for note in result.notes:
            click.secho(f"note: {note}", fg="yellow", err=True)
        if result.comparisons:
            click.echo(format_table(result.comparisons))
        if result.pushed is not None:
            click.echo(f"pushed {result.pushed.repo}@{result.pushed.number} {result.pushed.digest}")
        if result.output is not None:
            click.echo(f"written to {result.output}")
    if not result.passed:
        sys.exit(1)


_device_option = click.option("--device", type=click.Choice(["auto", "cuda", "cpu"]), default="auto",
                              show_default=True, help="auto: CUDA when available.")
_output_options = [
    click.option("--push", metavar="NS/NAME", help="Push the result as a new revision (with lineage)."),
    click.option("-o", "--output", type=click.Path(path_type=Path), help="Write the result to this folder."),
    click.option("--tag", help="Tag the pushed revision."),
    json_option(),
]


def _with(options: list[Any]) -> Callable[[F], F]:
    """Apply a list of click options (the output options several commands share) in their listed order."""
    def decorate(func: F) -> F:
        for option in reversed(options):
            func = option(func)
        return func
    return decorate


@click.command()
@click.argument("adapter_ref", metavar="ADAPTER_REF")
@base_model_option("The base model to merge into.", required=True)
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]), help="Storage dtype of the result.")
@click.option("--precision", type=click.Choice(["float32", "float64"]), default="float32", show_default=True,
              help="Precision the arithmetic runs in (the result is stored in the storage dtype).")
@click.option("--safe", is_flag=True, help="Refuse to write if any merged tensor has NaN or Inf.")
@click.option("--no-check", is_flag=True, help="Skip every check (not recommended).")
@click.option("--check-outputs", type=click.Choice(["auto", "full", "off"]), default="auto", show_default=True,
              help="Every merged LoRA tensor is always checked against base + delta within its dtype's rounding. "
                   "The output check (the merged model against PEFT's own merge, on a probe batch) runs when some "
                   "changed tensor is outside that rule (auto: DoRA, SHiRA, other PEFT types, replaced tensors), "
                   "always (full) or never (off).")
@_device_option
@_with(_output_options)
def merge(adapter_ref: str, base_model: str, dtype: str | None, precision: str, safe: bool, no_check: bool,
          check_outputs: str, device: str, push: str | None, output: Path | None, tag: str | None,
          as_json: bool) -> None:
    """Merge the adapter ADAPTER_REF into a base model, check the result on the model, push or write it."""
    stage = stages("merge", models=True)  # before the model libraries are imported
    from .. import ops
    from ..api import RegistryAPI

    if not push and not output:
        raise click.UsageError("give --push NS/NAME or -o DIR")
    doing(interrupted=_INTERRUPTED)
    from tqdm import tqdm

    with tqdm(unit="B", unit_scale=True, unit_divisor=1024, desc="merge", leave=False, disable=None,
              file=sys.stderr) as bar:
        result = ops.merge(cast(RegistryAPI, _OnFirstUse()), adapter_ref, base_model, push=push, output=output,
                           dtype=dtype,
                           device=device, precision=precision, safe=safe, check=not no_check,
                           check_outputs=check_outputs, tag=tag,
                           progress=bar.update, stage=stage)
    _report(result, as_json)


@click.command()
@click.argument("merged_ref", metavar="MERGED_REF")
@click.option("--adapter", "adapter_ref", required=True, metavar="ADAPTER_REF",
              help="The adapter to take out: registry id or folder.")
@click.option("--precision", type=click.Choice(["float32", "float64"]), default="float32", show_default=True,
              help="Precision the arithmetic runs in (the result is stored in the storage dtype).")
@_device_option
@_with(_output_options)
def unmerge(merged_ref: str, adapter_ref: str, precision: str, device: str, push: str | None, output: Path | None,
            tag: str | None, as_json: bool) -> None:
    """Take an adapter back out of the merged model MERGED_REF (bit for bit when the registry knows the original)."""
    stage = stages("unmerge", models=True)  # before the model libraries are imported
    from .. import ops

    if not push and not output:
        raise click.UsageError("give --push NS/NAME or -o DIR")
    doing(interrupted=_INTERRUPTED)
    _report(ops.unmerge(open_registry(), merged_ref, adapter_ref, push=push, output=output, device=device,
                        precision=precision, tag=tag, stage=stage), as_json)


@click.command()
@click.argument("refs", nargs=-1, required=True, metavar="REF [REF ...]")
@click.option("--weights", required=True, help="Comma-separated, one per adapter: 0.6,0.4")
@click.option("--method", default="svd", show_default=True, help="How the adapters are combined (PEFT's "
              "combination_type; the *_svd methods refactor the sum to --rank).",
              type=click.Choice(["cat", "linear", "svd", "ties", "ties_svd", "dare_linear", "dare_ties",
                                 "dare_linear_svd", "dare_ties_svd", "magnitude_prune", "magnitude_prune_svd"]))
@click.option("--semantics", type=click.Choice(["exact", "peft"]), default="exact", show_default=True,
              help="exact: the intended sum of w_i * s_i * B_i A_i. peft: what PEFT's add_weighted_adapter returns, "
                   "including its cross terms and scaling quirks.")
@click.option("--rank", type=int, help="Rank of the result (svd family; PEFT's svd_rank).")
@click.option("--svd-clamp", type=float, help="Clamp quantile of the SVD (svd family; PEFT's svd_clamp).")
@click.option("--density", type=float, help="Fraction kept by ties / dare / magnitude_prune.")
@click.option("--majority-sign-method", type=click.Choice(["total", "frequency"]), default="total", show_default=True,
              help="How ties methods elect the sign of each parameter (PEFT's majority_sign_method).")
@click.option("--seed", type=int, help="Seed for DARE's random masks.")
@base_model_option("Run the result on this base model and compare its outputs.")
@_device_option
@_with(_output_options)
def combine(refs: tuple[str, ...], weights: str, method: str, semantics: str, rank: int | None,
            svd_clamp: float | None, density: float | None, majority_sign_method: str, seed: int | None,
            base_model: str | None, device: str, push: str | None, output: Path | None, tag: str | None,
            as_json: bool) -> None:
    """Combine two or more adapters (REF [REF ...]) with weights into one adapter, or reduce the rank of one
    (REF --weights 1 --method svd --rank R: the best rank-R approximation of its delta)."""
    stage = stages("combine", models=True)  # before the model libraries are imported
    from .. import ops

    try:
        parsed = [float(w) for w in weights.split(",")]
    except ValueError:
        raise click.UsageError(f"--weights must be numbers separated by commas, got {weights!r}") from None
    if not push and not output:
        raise click.UsageError("give --push NS/NAME or -o DIR")
    doing(interrupted=_INTERRUPTED)
    _report(ops.combine(open_registry(), list(refs), parsed, method, semantics=semantics, rank=rank,
                        svd_clamp=svd_clamp, density=density, majority_sign_method=majority_sign_method, seed=seed,
                        base_ref=base_model, push=push, output=output, device=device, tag=tag,
                        stage=stage), as_json)


@click.command(name="check-equivalence")
@click.argument("adapter_ref", metavar="ADAPTER_REF")
@base_model_option("The base model the adapter was trained on.", required=True)
@click.option("--merged", "merged_ref", metavar="MERGED_REF", help="A merged model to check (default: merge now).")
@_device_option
@json_option()
def check_equivalence(adapter_ref: str, base_model: str, merged_ref: str | None, device: str, as_json: bool) -> None:
    """Run base + ADAPTER_REF, the merged model and PEFT's merge on one probe batch and compare."""
    stage = stages("check-equivalence", models=True)  # before the model libraries are imported
    from .. import ops

    _report(ops.check(open_registry(), adapter_ref, base_model, merged_ref, device=device,
                      stage=stage), as_json)


COMMANDS = (merge, unmerge, combine, check_equivalence)
