"""`swiftreg import`: an adapter from the Hugging Face Hub (hf://) or ModelScope (ms://), with its provenance."""
from __future__ import annotations

import click

from .common import base_model_option, echo_json, json_option, open_registry, progress_bar


@click.command(name="import")
@click.argument("source", metavar="hf://OWNER/NAME[@REV] | ms://OWNER/NAME[@REV]")
@click.argument("repo_id", metavar="NAMESPACE/NAME")
@click.option("--tag", help="Also tag the imported revision.")
@base_model_option("The base model the adapter must fit; a registered one is also recorded as its base.")
@click.option("--subfolder", metavar="DIR", help="The folder of the hub repo that holds the adapter.")
@click.option("-m", "--message", help="A note kept with the revision (default: where it came from).")
@click.option("--allow-nonfinite", is_flag=True,
              help="Store tensors holding NaN or Inf (refused by default, as by push).")
@json_option()
def import_(source: str, repo_id: str, tag: str | None, base_model: str | None, subfolder: str | None,
            message: str | None, as_json: bool, allow_nonfinite: bool = False) -> None:
    """Import the adapter SOURCE from the Hugging Face Hub (hf://) or ModelScope (ms://) as a revision of
    NAMESPACE/NAME, with its provenance.

    Downloaded with the hub's own client (HF_ENDPOINT, HF_TOKEN, MODELSCOPE_ENDPOINT, MODELSCOPE_API_TOKEN
    apply), validated like push; pickles are left out. Importing the same hub commit again is a no-op.
    Against a server (SWIFTREG_URL) the import runs there as a job, downloaded by its workers.
    """
    from .. import constants

    registry = open_registry()
    remote: dict[str, object] = {}
    if constants.url():  # the server's workers import: say which job, then wait for it
        remote["on_queued"] = lambda job: click.echo(
            f"queued as import job {job.id} on {constants.url()}: a `swiftreg worker` beside that server "
            "runs it; waiting (Ctrl-C stops waiting, not the job)", err=True)
    with progress_bar(0, "import") as bar:
        from ..rules import base_model_folder

        folder = base_model_folder(base_model)
        result = registry.import_from(source, repo_id, tag=tag, base_model=None if folder else base_model,
                                      base_folder=folder, subfolder=subfolder, message=message, progress=bar.update,
                                      allow_nonfinite=allow_nonfinite, **remote)
    if as_json:
        echo_json({"created": result.created, "already_imported": result.already_imported,
                   "commit": result.commit, "files": result.files, "notices": result.notices,
                   "revision": result.revision.to_dict()})
        return
    for notice in result.notices:
        click.secho(f"note: {notice}", fg="yellow", err=True)
    rev = result.revision
    verb = ("already imported:" if result.already_imported else "imported" if result.created
            else "unchanged: same files as")
    click.echo(f"{verb} {rev.repo}@{rev.number} {rev.digest} ({rev.format}) from {result.source.hub}://"
               f"{result.source.repo} commit {result.commit}{' tags: ' + ', '.join(rev.tags) if rev.tags else ''}")


COMMANDS = (import_,)
