"""The Hugging Face Hub download protocol (../shared/docs/HF_PROTOCOL.md): what huggingface_hub needs."""
from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["huggingface"])
