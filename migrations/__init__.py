"""Alembic migrations: the only way swiftreg's schema is created or changed (`swiftreg db upgrade`).

HEAD names the newest migration so a registry can check its schema without importing Alembic
(tests/test_migrations.py keeps it equal to the scripts' real head).
"""
HEAD = "0009"
