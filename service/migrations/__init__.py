"""Alembic migrations of the service's schema; :func:`service.db.init_db` applies them."""
