"""The API's lease on the database: one API process at a time runs the background work.

A lease is a row (name, holder, expiry). Taking it is one compare-and-set ``UPDATE`` (or the
first ``INSERT``) that succeeds only for its holder or once the last holder let it expire, so
two processes never both hold it; expiries are the processes' UTC clocks, as heartbeats are.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, or_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.store.db import affected
from service.store.models import Lease, utcnow


@dataclass(frozen=True)
class Holder:
    """Who holds a lease, and until when."""

    holder: str
    expires_at: datetime


def take_lease(session: Session, name: str, holder: str, ttl_s: float) -> bool:
    """Take or renew lease ``name`` for ``holder`` until ``ttl_s`` from now; False (nothing
    changed) while another holder's lease runs."""
    now = utcnow()
    until = now + timedelta(seconds=ttl_s)
    stmt = (
        update(Lease)
        .where(Lease.name == name, or_(Lease.holder == holder, Lease.expires_at < now))
        .values(holder=holder, expires_at=until)
    )
    if affected(session, stmt):
        return True
    if session.get(Lease, name) is not None:
        return False
    try:
        with session.begin_nested():
            session.add(Lease(name=name, holder=holder, expires_at=until))
    except IntegrityError:  # another process inserted it first
        return False
    return True


def lease_holder(session: Session, name: str) -> Holder | None:
    """The lease's holder and expiry, None when nobody ever took it."""
    lease = session.get(Lease, name)
    return None if lease is None else Holder(lease.holder, lease.expires_at)


def release_lease(session: Session, name: str, holder: str) -> None:
    """Give the lease up, if ``holder`` still holds it (a clean shutdown)."""
    session.execute(delete(Lease).where(Lease.name == name, Lease.holder == holder))
