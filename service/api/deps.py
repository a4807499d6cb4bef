"""FastAPI dependencies as ``Annotated`` aliases, so no route repeats a lookup or a 404."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Path, Request
from sqlalchemy.orm import Session, sessionmaker

from service import store
from service.api.views import Views
from service.config import Settings
from service.dispatch.dispatcher import Dispatcher
from service.errors import StorageError
from service.store.db import Schema, session_scope
from service.store.models import Sweep


def get_settings(request: Request) -> Settings:
    """The settings the app was built with."""
    settings: Settings = request.app.state.settings
    return settings


def get_session_factory(request: Request) -> sessionmaker[Session]:
    """The session factory, for routes that open their own short transactions.

    Raises:
        StorageError: the schema is not up to date yet (the database was down at start-up).
    """
    schema: Schema = request.app.state.schema
    if not schema.ready.is_set():
        raise StorageError(f"the database is not ready: {schema.error}")
    factory: sessionmaker[Session] = request.app.state.session_factory
    return factory


def get_session(request: Request) -> Iterator[Session]:
    """One transaction per request, committed before the response is sent."""
    with session_scope(get_session_factory(request)) as session:
        yield session


def get_views(request: Request) -> Views:
    """The response builder."""
    views: Views = request.app.state.views
    return views


def get_dispatcher(request: Request) -> Dispatcher:
    """The dispatcher that submits, cancels and reconciles sweep jobs."""
    dispatcher: Dispatcher = request.app.state.dispatcher
    return dispatcher


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session, scope="function")]
SessionFactoryDep = Annotated[sessionmaker[Session], Depends(get_session_factory)]
ViewsDep = Annotated[Views, Depends(get_views)]
DispatcherDep = Annotated[Dispatcher, Depends(get_dispatcher)]


MAX_ID = 2**31 - 1
"""The largest id, number or offset a path or query may name (both databases store it)."""
SweepId = Annotated[int, Path(ge=1, le=MAX_ID, description="the sweep's id")]


def get_sweep(session: SessionDep, sweep_id: SweepId) -> Sweep:
    """The sweep named by the path (404 through :class:`service.errors.SweepNotFoundError`)."""
    return store.get_sweep(session, sweep_id)


SweepDep = Annotated[Sweep, Depends(get_sweep)]
