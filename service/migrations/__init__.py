"""Alembic migrations for the service database (SQLite and PostgreSQL).

The package carries its own migrations so an installed wheel can upgrade a
database: ``service.db.migrate(engine)`` runs them, and the service does so at
start. There is no ``alembic.ini``; the configuration is built in
``service.db.alembic_config``. Developer and operator commands:
``python -m service.migrations --help``.
"""
