"""`swiftreg webhook add|ls|rm|test|deliveries|redeliver|dispatch`: tell other systems what changed.

Every command but `dispatch` works on the embedded registry or, with SWIFTREG_URL, on a server (an admin
token on the webhook's namespace). `dispatch` runs the delivery loop where the database is; `swiftreg
worker` runs the same loop beside its jobs (registry/webhooks/delivery.py).
"""
from __future__ import annotations

import sys
from typing import Any

import click

from .common import echo_json, json_option, local_registry, open_registry, shows


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


@click.group()
def webhook() -> None:
    """Webhooks: a namespace's events (revision.created, tag.moved, job.failed, ...) POSTed to a URL, signed."""


@webhook.command(name="add")
@click.argument("url")
@click.option("--namespace", required=True, help="Whose events the webhook receives.")
@click.option("--event", "events", multiple=True, metavar="KIND",
              help="Only this kind of event (repeatable; default: every kind). `swiftreg webhook kinds` lists them.")
@click.option("--secret", help="The shared secret (sent as X-Webhook-Secret, and the key of the signature); '-' reads "
                               "it from stdin. Default: a generated one, printed once.")
@click.option("--description", help="What the webhook is for (shown by `webhook ls`).")
@json_option()
def webhook_add(url: str, namespace: str, events: tuple[str, ...], secret: str | None, description: str | None,
                as_json: bool) -> None:
    """Send NAMESPACE's events to URL (http or https; checked before it is stored)."""
    if secret == "-":
        secret = sys.stdin.readline().strip()
    hook = open_registry().add_webhook(url, namespace, events=list(events) or None, secret=secret,
                                       description=description)
    if as_json:
        echo_json(hook.to_dict())
        return
    click.echo(f"webhook {hook.id}: {namespace} -> {hook.url} ({', '.join(hook.events or ['every event'])})")
    if hook.secret:
        click.echo(hook.secret)
        click.secho("that is the webhook's secret: keep it now for the receiver, it cannot be shown again",
                    err=True, fg="yellow")


@webhook.command(name="ls")
@click.option("--namespace", help="Only this namespace's webhooks.")
@shows(lambda found: [h.to_dict() for h in found], lambda found: _print_hooks(found))
def webhook_list(namespace: str | None) -> Any:
    """List webhooks (never their secrets)."""
    return open_registry().webhooks(namespace)


def _print_hooks(found: list[Any]) -> None:
    if not found:
        click.echo("no webhooks")
    for h in found:
        click.echo(f"{h.id:>4}  {h.namespace:<16} {h.url:<48} {','.join(h.events or ['*']):<24} "
                   f"pending {h.pending:<4} last {h.last_status or '-'}")


@webhook.command(name="rm")
@click.argument("webhook_id", type=int)
def webhook_remove(webhook_id: int) -> None:
    """Remove webhook WEBHOOK_ID and its deliveries."""
    open_registry().remove_webhook(webhook_id)
    click.echo(f"removed webhook {webhook_id}")


@webhook.command(name="kinds")
def webhook_kinds() -> None:
    """List the kinds of event a webhook can receive."""
    from ..webhooks import EVENT_KINDS

    for kind in EVENT_KINDS:
        click.echo(kind)


@webhook.command(name="test")
@click.argument("webhook_id", type=int)
@json_option()
def webhook_test(webhook_id: int, as_json: bool) -> None:
    """Send webhook WEBHOOK_ID a webhook.test event now and show the answer (exit 1 if it was not 2xx)."""
    delivery = open_registry().test_webhook(webhook_id)
    if as_json:
        echo_json(delivery.to_dict())
    else:
        _print_deliveries([delivery])
    if delivery.status != "succeeded":
        sys.exit(1)


@webhook.command(name="deliveries")
@click.argument("webhook_id", type=int)
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True, help="How many, newest first.")
@shows(lambda found: [d.to_dict() for d in found], lambda found: _print_deliveries(found))
def webhook_deliveries(webhook_id: int, limit: int) -> Any:
    """Deliveries of webhook WEBHOOK_ID, newest first, with the receiver's answers."""
    return open_registry().webhook_deliveries(webhook_id, limit=limit)


def _print_deliveries(found: list[Any]) -> None:
    if not found:
        click.echo("no deliveries")
    for d in found:
        answer = d.response_status if d.response_status is not None else (d.error or "-")
        click.echo(f"{d.id:>6}  {d.event:<22} {d.stream}#{d.sequence:<5} {d.status:<9} attempts {d.attempts:<3} "
                   f"answer {answer}  {_when(d.finished_at or d.created_at)}  {d.uuid}")


@webhook.command(name="redeliver")
@click.argument("delivery_id", type=int)
@json_option()
def webhook_redeliver(delivery_id: int, as_json: bool) -> None:
    """Queue delivery DELIVERY_ID's event again for its webhook (a new delivery id; the dispatcher sends it)."""
    delivery = open_registry().redeliver(delivery_id)
    if as_json:
        echo_json(delivery.to_dict())
    else:
        click.echo(f"delivery {delivery.id} queued ({delivery.event}, again from delivery {delivery_id})")


@webhook.command(name="dispatch")
@click.option("--poll", type=click.FloatRange(min=0.01), default=1.0, show_default=True,
              help="Seconds between looks for due deliveries when there is nothing to send.")
@click.option("--exit-when-idle", is_flag=True, help="Exit once no delivery is pending (batch use).")
def webhook_dispatch(poll: float, exit_when_idle: bool) -> None:
    """Deliver pending webhook events until stopped (what `swiftreg worker` also does beside its jobs)."""
    import signal

    reg = local_registry("webhook dispatch")
    dispatcher = reg.dispatcher(on_event=lambda line: click.echo(line, err=True))
    signal.signal(signal.SIGTERM, lambda *_: dispatcher.stop())
    click.echo(f"webhook dispatcher {dispatcher.worker_id} ready", err=True)
    try:
        dispatcher.run(poll=poll, exit_when_idle=exit_when_idle)
    except KeyboardInterrupt:
        dispatcher.stop()
    click.echo(f"stopped: {dispatcher.sent} attempts ({dispatcher.succeeded} delivered, {dispatcher.failed} "
               "failed for good)", err=True)


COMMANDS = (webhook,)
