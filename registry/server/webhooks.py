"""Webhooks over HTTP, under /api/v1: what `swiftreg webhook` does, for admin tokens.

    POST   /api/v1/webhooks                                add one (admin on its namespace): 201, the secret once
    GET    /api/v1/webhooks                                list (a namespace admin: its namespaces' only)
    GET    /api/v1/webhooks/{id}                           one webhook
    DELETE /api/v1/webhooks/{id}                           remove it and its deliveries: 204
    POST   /api/v1/webhooks/{id}/test                      send a webhook.test event now; the delivery
    GET    /api/v1/webhooks/{id}/deliveries                its deliveries, newest first, with the answers
    POST   /api/v1/webhooks/deliveries/{id}/redeliver      queue that delivery's event again: 201

Thin, as every dialect: the token is checked, the service does the rest (registry/service/events.py). A
webhook of a namespace the token may not administer is answered 404, as if it did not exist.
"""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from ..errors import WebhookNotFoundError
from .auth import Caller, admin, require
from .lookup import registry_of
from .schemas import V1Route, error_docs

router = APIRouter(prefix="/api/v1", tags=["webhooks"], route_class=V1Route)

WEBHOOK_ID = Annotated[int, Path(ge=1, le=2**31 - 1, description="the webhook's id")]
DELIVERY_ID = Annotated[int, Path(ge=1, le=2**31 - 1, description="the delivery's id")]


class WebhookIn(BaseModel):
    url: str = Field(max_length=2000, description="http(s) URL the events are POSTed to")
    namespace: str = Field(max_length=96, description="whose events it receives")
    events: list[str] | None = Field(default=None, max_length=20, description="event kinds (default: all)")
    secret: str | None = Field(default=None, max_length=200, description="shared secret (default: generated)")
    description: str | None = Field(default=None, max_length=200)


def _managed(request: Request, webhook_id: int) -> None:
    """404 unless the caller administers the webhook's namespace."""
    token = require(request, "admin", None)
    hook = registry_of(request).webhook(webhook_id)
    if token is not None and token.namespaces is not None and hook.namespace not in token.namespaces:
        raise WebhookNotFoundError(f"no webhook {webhook_id} in this registry (swiftreg webhook ls lists them)")


@router.post("/webhooks", summary="Add a webhook for a namespace's events (admin on that namespace); the "
             "generated secret is in this answer only", status_code=201, responses=error_docs(400, 401, 403, 422))
def add_webhook(request: Request, body: WebhookIn) -> Response:
    caller = require(request, "admin", body.namespace)
    hook = registry_of(request).add_webhook(body.url, body.namespace, events=body.events, secret=body.secret,
                                            description=body.description,
                                            created_by=caller.owner if caller is not None else None)
    return JSONResponse(hook.to_dict(), status_code=201)


@router.get("/webhooks", summary="Webhooks, oldest first (never their secrets)", responses=error_docs(400, 401, 403))
def list_webhooks(request: Request, caller: Annotated[Caller, Depends(admin)],
                  namespace: Annotated[str | None, Query(max_length=96)] = None) -> Response:
    if namespace is not None:
        require(request, "admin", namespace)
    limit = caller.namespaces if caller is not None and caller.namespaces is not None else None
    found = registry_of(request).webhooks(namespace, namespaces=limit)
    return JSONResponse([h.to_dict() for h in found])


@router.get("/webhooks/{webhook_id}", summary="One webhook", responses=error_docs(400, 401, 403, 404))
def get_webhook(request: Request, webhook_id: WEBHOOK_ID) -> Response:
    _managed(request, webhook_id)
    return JSONResponse(registry_of(request).webhook(webhook_id).to_dict())


@router.delete("/webhooks/{webhook_id}", summary="Remove a webhook and its deliveries", status_code=204,
               responses=error_docs(400, 401, 403, 404))
def remove_webhook(request: Request, webhook_id: WEBHOOK_ID) -> Response:
    _managed(request, webhook_id)
    registry_of(request).remove_webhook(webhook_id)
    return Response(status_code=204)


@router.post("/webhooks/{webhook_id}/test", summary="Send the webhook a webhook.test event now; the delivery "
             "with the receiver's answer", responses=error_docs(400, 401, 403, 404))
def test_webhook(request: Request, webhook_id: WEBHOOK_ID) -> Response:
    _managed(request, webhook_id)
    return JSONResponse(registry_of(request).test_webhook(webhook_id).to_dict())


@router.get("/webhooks/{webhook_id}/deliveries", summary="A webhook's deliveries, newest first, with the answers",
            responses=error_docs(400, 401, 403, 404))
def deliveries(request: Request, webhook_id: WEBHOOK_ID,
               limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> Response:
    _managed(request, webhook_id)
    return JSONResponse([d.to_dict() for d in registry_of(request).webhook_deliveries(webhook_id, limit=limit)])


@router.post("/webhooks/deliveries/{delivery_id}/redeliver", summary="Queue a delivery's event again for its "
             "webhook (a new delivery id)", status_code=201, responses=error_docs(400, 401, 403, 404))
def redeliver(request: Request, delivery_id: DELIVERY_ID) -> Response:
    reg = registry_of(request)
    _managed(request, reg.delivery(delivery_id).webhook_id)
    return JSONResponse(reg.redeliver(delivery_id).to_dict(), status_code=201)
