"""Persistence: typed models, engines and migrations."""
from .database import Database
from .engine import downgrade, ensure_schema, insert_ignore, make_engine, read_session, upgrade, write_session
from .models import (
    AdapterRecord, Base, BaseModelRecord, DerivedRecord, JobRecord, ProvenanceRecord, RefRecord, RevisionRecord,
    TokenRecord, ValidationRunRecord,
)

__all__ = ["AdapterRecord", "Base", "BaseModelRecord", "Database", "DerivedRecord", "JobRecord", "ProvenanceRecord",
           "RefRecord", "RevisionRecord", "TokenRecord", "ValidationRunRecord", "downgrade", "ensure_schema",
           "insert_ignore", "make_engine", "read_session", "upgrade", "write_session"]
