"""swiftreg's own JSON API under /api/v1 (protocol in registry/server/__init__.py)."""
from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/api/v1", tags=["api v1"])
