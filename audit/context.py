"""Who is acting and from where: set once per request, task or command; read by `audit.services.record`."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ActorContext:
    user: Any = None  # a User, or None for the system
    via: str = "system"  # web, api, cli, worker, beat, system
    source: str = ""  # client address for web/api, host name or "" otherwise


# ActorContext is a frozen dataclass, so sharing the default instance is safe.
_current: contextvars.ContextVar[ActorContext] = contextvars.ContextVar("audit_actor", default=ActorContext())  # noqa: B039


def current() -> ActorContext:
    return _current.get()


@contextlib.contextmanager
def acting(user: Any = None, *, via: str, source: str = "") -> Iterator[ActorContext]:
    token = _current.set(ActorContext(user=user, via=via, source=source))
    try:
        yield _current.get()
    finally:
        _current.reset(token)


def set_user(user: Any) -> None:
    """The request's user became known (after authentication): keep via and source."""
    ctx = _current.get()
    _current.set(ActorContext(user=user, via=ctx.via, source=ctx.source))
