"""Alembic migrations of the service's schema; :func:`service.store.db.init_db` applies them."""
