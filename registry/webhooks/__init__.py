"""Events and webhooks: what changed in the registry, told to the systems that act on it.

    outbox.py    record(): an event row written in the transaction of the change it describes, numbered
                 in its stream (a repository) and fanned out to the namespace's webhooks as deliveries
    payloads.py  the JSON a receiver gets: the Hugging Face Hub's webhook shape plus swiftreg's own fields
    signing.py   X-Webhook-Secret, the HMAC-SHA256 signature header (timestamp + body) and its verification
    crypto.py    webhook secrets encrypted at rest (Fernet; SWIFTREG_WEBHOOK_KEY or a 0600 key file)
    urls.py      which URLs a webhook may target (http/https, no credentials, no private addresses unless allowed)
    delivery.py  the dispatcher: claim due deliveries, POST them, record the answer, back off, give up

Nothing here is imported by a surface directly: the service (registry/service/events.py) manages
webhooks, `swiftreg worker` and `swiftreg webhook dispatch` run the dispatcher.
"""
from __future__ import annotations

from .outbox import EVENT_KINDS, record

__all__ = ["EVENT_KINDS", "record"]
