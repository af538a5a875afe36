"""Alembic migrations: the only way swiftreg's schema is created or changed (`swiftreg db upgrade`)."""
